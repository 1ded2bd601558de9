"""Models: BrainLM (fMRI masked autoencoders), DNA foundation-model encoders, the genotype encoder."""
