"""Images: where root filesystems come from (embedded default, tarballs, OCI, registries)."""

from jailshell.engine.images.store import DEFAULT_IMAGE, Image, ImageStore, parse_ref

__all__ = ["DEFAULT_IMAGE", "Image", "ImageStore", "parse_ref"]
