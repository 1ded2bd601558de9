"""Training drivers, one module per stage (`brainmm.train.align.run_align`, ...), each callable from Python."""
