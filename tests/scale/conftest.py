"""Helpers for the scale tests: unique names (the engine is shared), images made and removed by tag."""

from __future__ import annotations

import aiodocker

BASE = "debian:bookworm-slim"


async def remove_images(*names: str) -> None:
    """Remove images (or just tags) this test made; absent ones are fine."""
    async with aiodocker.Docker() as docker:
        for name in names:
            try:
                await docker.images.delete(name, force=True)
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise


async def images_labelled(label: str) -> list[dict]:
    async with aiodocker.Docker() as docker:
        return await docker.images.list(filters={"label": [label]})
