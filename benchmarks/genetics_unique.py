"""Benchmark: DNA forward passes with the content-addressed haplotype cache vs. embedding per person.

1000 people x 20 regions (1 kb) from a VCF simulated with pysam: coalescent genealogies per region with
exponential population growth (most variants rare, as in human samples), phased SNVs and short indels. A tiny random-init GENERator
(through the real `encoders.dna` registry, rc="none" so one sequence = one model row) embeds them:

* dedup: `brainmm.data.genetics.run_embed` on an empty cache; the model's forward rows are counted with a
  hook and must equal the number of unique sequences (haplotypes + reference windows);
* reference, measured in the same run: the per-person pipeline, one `embed` call per person with that
  person's 40 haplotype sequences (only duplicates within one person are shared), timed on the first
  `--naive-subjects` people and scaled linearly to the cohort (every person costs the same there).

    python benchmarks/genetics_unique.py [--subjects 1000] [--regions 20] [--naive-subjects 100]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import pysam
import torch


def tiny_generator(folder: Path) -> Path:
    """Random-init GENERator layout: Llama (hidden 64, 2 layers) + 6-mer vocab.txt."""
    from transformers import LlamaConfig, LlamaModel

    specials = ["<oov>", "<s>", "</s>", "<pad>", "<mask>"] + [f"<reserved_{i}>" for i in range(27)]
    kmers = ["".join(p) for p in itertools.product("ATCG", repeat=6)]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(specials + kmers) + "\n")
    cfg = LlamaConfig(vocab_size=len(specials) + len(kmers), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    LlamaModel(cfg).save_pretrained(folder)
    return folder


def allele_frequencies(vcf: Path) -> np.ndarray:
    """ALT allele frequency of every record."""
    out = []
    with pysam.VariantFile(str(vcf)) as fh:
        for rec in fh:
            gts = np.array([s.allele_indices for s in rec.samples.values()], dtype=float)
            out.append(gts.mean())
    return np.array(out)


def main() -> None:
    from brainmm.data.genetics import GeneticsEmbedConfig, make_plan, run_embed
    from brainmm.data.genetics.simulate import simulate_vcf_cohort
    from brainmm.runtime import set_quiet
    from encoders.dna import create_dna_encoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=1000)
    ap.add_argument("--regions", type=int, default=20)
    ap.add_argument("--region-length", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--naive-subjects", type=int, default=100,
                    help="people timed for the per-person reference (0 = skip it)")
    args = ap.parse_args()
    set_quiet(True)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = simulate_vcf_cohort(tmp / "cohort", args.subjects, args.regions, args.region_length, seed=args.seed)
        t_sim = time.perf_counter() - t0
        af = allele_frequencies(paths["vcf"])
        model = tiny_generator(tmp / "generator-tiny")
        enc = create_dna_encoder("generator", path=str(model), rc="none", batch_size=64)
        rows = [0]
        enc.model.register_forward_pre_hook(lambda _m, a, kw: rows.__setitem__(0, rows[0] + kw["input_ids"].shape[0]),
                                            with_kwargs=True)

        cfg = GeneticsEmbedConfig()
        cfg.inputs.vcf, cfg.inputs.fasta, cfg.inputs.regions = (str(paths[k]) for k in ("vcf", "fasta", "regions"))
        cfg.encoder.path, cfg.cache_dir, cfg.out = str(model), str(tmp / "cache"), str(tmp / "out" / "dna")
        t0 = time.perf_counter()
        plan = make_plan(cfg.inputs, cfg.mode)
        t_plan = time.perf_counter() - t0
        unique = len(plan.unique_sequences())
        t0 = time.perf_counter()
        table = run_embed(cfg, encoder=enc)
        t_dedup = time.perf_counter() - t0
        dedup_rows = rows[0]
        assert dedup_rows == unique == table.meta["sequences"]["embedded"], (dedup_rows, unique)
        naive = 2 * args.subjects * args.regions

        print(f"cohort: {args.subjects} subjects x {args.regions} regions of {args.region_length} bp, "
              f"{len(af)} variants (simulated in {t_sim:.1f} s)")
        print(f"allele frequencies: {np.mean(af < 0.01):.0%} < 1 %, {np.mean(af < 0.05):.0%} < 5 %, "
              f"median {np.median(af):.4f}")
        print(f"plan (haplotypes from VCF + FASTA): {t_plan:.2f} s")
        print(f"naive sequence count (2 x subjects x regions): {naive}")
        print(f"unique sequences (haplotypes + reference windows): {unique}")
        print(f"model forward rows with the cache: {dedup_rows}  (= unique: {dedup_rows == unique})")
        print(f"ratio forward rows / naive count: {dedup_rows / naive:.4f}  ({naive / dedup_rows:.0f}x fewer)")
        print(f"embedding time with the cache (whole stage, empty cache): {t_dedup:.2f} s")
        m = min(args.naive_subjects, args.subjects)
        if m > 0:
            rows[0] = 0
            t0 = time.perf_counter()
            for s in range(m):
                person = [r.sequences[r.index[s, h]] for r in plan.regions for h in (0, 1)]
                enc.embed(person)
            scale = args.subjects / m
            t_naive = (time.perf_counter() - t0) * scale
            print(f"reference, per-person embedding (same run, {m} people measured, x{scale:g}): "
                  f"{rows[0] * scale:.0f} forward rows, {t_naive:.1f} s")
            print(f"ratio time cached / per-person: {t_dedup / t_naive:.4f}  ({t_naive / t_dedup:.0f}x faster)")


if __name__ == "__main__":
    main()
