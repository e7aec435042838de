"""Generic utilities every layer may use: atomic writes, errors, content hashing, YAML and COCO
I/O, box conventions, image decoding, the per-image content cache, trusted checkpoint loading.

The lowest layer: it imports nothing of this project (enforced by import-linter, see
ARCHITECTURE.md)."""
