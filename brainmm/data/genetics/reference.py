"""The reference genome: an indexed FASTA (plain or bgzip) read through pysam."""

from __future__ import annotations

from pathlib import Path

from brainmm.data.genetics.regions import Region
from brainmm.data.genetics.sequences import normalise_sequence
from brainmm.errors import BrainmmError
from brainmm.runtime import LOG


def file_compression(path: Path) -> str:
    """'plain', 'bgzf' or 'gzip' from the first bytes of the file."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:2] != b"\x1f\x8b":
        return "plain"
    # BGZF: gzip with FEXTRA and a 'BC' subfield (SAM/BAM spec, section 4.1).
    return "bgzf" if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC" else "gzip"


def index_files(path: Path) -> list[Path]:
    """The index files pysam needs for `path` (.fai, plus .gzi when bgzip-compressed)."""
    files = [Path(f"{path}.fai")]
    if file_compression(path) == "bgzf":
        files.append(Path(f"{path}.gzi"))
    return files


def _check_fasta_start(path: Path, kind: str) -> None:
    """Raise unless the first non-empty line is a '>' header (checked before htslib prints its own errors)."""
    import gzip

    opener = gzip.open if kind == "bgzf" else open
    try:
        with opener(path, "rb") as fh:
            first = next((line.strip() for line in fh if line.strip()), b"")
    except (OSError, EOFError) as err:
        raise BrainmmError(f"reference FASTA {path}: unreadable ({err})") from None
    if not first.startswith(b">"):
        raise BrainmmError(
            f"reference FASTA {path}: not a FASTA file (expected a '>name' header line first, got "
            f"{first[:40].decode('utf-8', 'replace')!r})"
        )


class Reference:
    """Random access to an indexed FASTA; builds a missing index (.fai/.gzi) next to the file."""

    def __init__(self, path: str | Path) -> None:
        import pysam

        self.path = Path(path)
        if not self.path.is_file():
            raise BrainmmError(f"reference FASTA {self.path}: not found")
        kind = file_compression(self.path)
        if kind == "gzip":
            raise BrainmmError(
                f"reference FASTA {self.path}: gzip-compressed but not bgzip, so it cannot be indexed; "
                "recompress it with `bgzip` (or decompress it)"
            )
        missing = [f for f in index_files(self.path) if not f.is_file()]
        if missing:
            _check_fasta_start(self.path, kind)
            LOG.info("reference FASTA %s: building the index %s", self.path, ", ".join(f.name for f in missing))
            try:
                pysam.faidx(str(self.path))
            except (pysam.SamtoolsError, OSError) as err:
                raise BrainmmError(
                    f"reference FASTA {self.path}: no index ({missing[0].name}) and building one failed "
                    f"({' '.join(str(err).split())[:200]}); run `samtools faidx {self.path}` where the folder "
                    "is writable"
                ) from None
        try:
            self._fasta = pysam.FastaFile(str(self.path))
        except (OSError, ValueError) as err:
            raise BrainmmError(f"reference FASTA {self.path}: unreadable ({err})") from None
        self.contigs: dict[str, int] = dict(zip(self._fasta.references, self._fasta.lengths))
        self.lowercase_bases = 0

    def check_region(self, region: Region) -> None:
        """Raise if the region's contig is not in the FASTA or the region runs past the contig end."""
        if region.contig not in self.contigs:
            names = list(self.contigs)
            raise BrainmmError(
                f"region {region.name!r}: contig {region.contig!r} is not in the reference FASTA {self.path} "
                f"(contigs: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}); regions must use the "
                "FASTA's contig names"
            )
        if region.end > self.contigs[region.contig]:
            raise BrainmmError(
                f"region {region.name!r} ({region.locus}) ends past the end of contig {region.contig!r} "
                f"({self.contigs[region.contig]} bp) in {self.path}"
            )

    def fetch(self, contig: str, start: int, end: int) -> str:
        """Upper-case reference bases [start, end) (0-based); lower-case bases are counted, IUPAC raises."""
        raw = self._fasta.fetch(contig, start, end)
        seq, n_lower = normalise_sequence(raw, f"reference FASTA {self.path}, {contig}:{start + 1}-{end}")
        self.lowercase_bases += n_lower
        return seq

    def close(self) -> None:
        """Close the file handle."""
        self._fasta.close()
