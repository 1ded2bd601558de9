"""`brainmm data fetch genetics-sample`: real 1000 Genomes genotypes and human chr20 from package registries."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from brainmm.data.fetch import apt_unpacked, pip_unpacked
from brainmm.io import atomic_dir, atomic_write_json, sha256_file

PYVCF3 = ("pyvcf3", "1.0.4")
VT_EXAMPLES = "vt-examples"

README = """# genetics-sample

Real data for the genetics stage, fetched from package registries by `brainmm data fetch genetics-sample`.

| file | what | source |
|---|---|---|
| `1kg.chr2.vcf.gz` (+ `.tbi`) | 1000 Genomes pilot genotypes: 629 samples x 381 SNVs on chromosome 2 (b37, 10,038-40,424), GT/GL/GD, about 44 % missing calls, most variants rare. Recompressed with bgzip and indexed; records unchanged. | PyPI `pyvcf3==1.0.4`, `vcf/test/1kg.vcf.gz` |
| `20.fa.gz` (+ `.fai`, `.gzi`) | Human chromosome 20, GRCh37, one record `>20` of 63,025,520 bp (bgzip). | Debian `vt-examples`, `usr/share/doc/vt/examples/ref/20.fa.gz` |

Use the VCF for the genotype-matrix path (`brainmm genetics matrix --vcf 1kg.chr2.vcf.gz ...`) and the FASTA for
the sequence path (haplotypes of chr20 regions; the 1kg VCF is on chromosome 2, so pair the FASTA with your own
contig-20 VCF). The 1000 Genomes data are open; pyvcf3 is BSD/MIT, vt-examples MIT.
"""


def fetch_genetics_sample(data_dir: Path) -> Path:
    """Fetch (once) the 1kg genotypes and the chr20 reference into `data_dir/genetics-sample`; returns it."""
    import pysam

    dest = Path(data_dir) / "genetics-sample"
    if (dest / "manifest.json").is_file():
        return dest
    wheel = pip_unpacked(*PYVCF3, Path(data_dir))
    deb = apt_unpacked(VT_EXAMPLES, Path(data_dir))
    ref_dir = deb / "usr/share/doc/vt/examples/ref"
    with atomic_dir(dest, overwrite=True) as tmp:
        # The wheel's VCF is plain gzip; bgzip it so it can be indexed and queried by region.
        plain = tmp / "1kg.chr2.vcf"
        with gzip.open(wheel / "vcf/test/1kg.vcf.gz", "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        pysam.tabix_compress(str(plain), str(tmp / "1kg.chr2.vcf.gz"), force=True)
        plain.unlink()
        pysam.tabix_index(str(tmp / "1kg.chr2.vcf.gz"), preset="vcf", force=True)
        shutil.copyfile(ref_dir / "20.fa.gz", tmp / "20.fa.gz")
        shutil.copyfile(ref_dir / "20.fa.gz.fai", tmp / "20.fa.gz.fai")
        with gzip.open(ref_dir / "20.fa.gz.gzi.gz", "rb") as src, open(tmp / "20.fa.gz.gzi", "wb") as dst:
            shutil.copyfileobj(src, dst)
        (tmp / "README.md").write_text(README)
        files = sorted(p.name for p in tmp.iterdir() if p.name != "manifest.json")
        atomic_write_json(tmp / "manifest.json", {
            "name": "genetics-sample",
            "sources": {"1kg.chr2.vcf.gz": f"pip {PYVCF3[0]}=={PYVCF3[1]}: vcf/test/1kg.vcf.gz",
                        "20.fa.gz": f"apt {VT_EXAMPLES}: usr/share/doc/vt/examples/ref/20.fa.gz"},
            "vcf": "1kg.chr2.vcf.gz",
            "fasta": "20.fa.gz",
            "vcf_samples": 629,
            "vcf_records": 381,
            "fasta_contigs": {"20": 63025520},
            "sha256": {f: sha256_file(tmp / f) for f in files},
        })
        for p in tmp.iterdir():
            p.chmod(0o644)
        tmp.chmod(0o755)
    return dest
