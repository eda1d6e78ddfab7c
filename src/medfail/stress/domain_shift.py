"""Domain-shift stress tests (CT windowing, H&E stain, MRI artifacts, resolution/scanner)."""
