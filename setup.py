"""Build script for the one C helper; everything else is in pyproject.toml.

``walrus_p2p/core/_leafhash.c`` (keyed blake3 of many equal-length symbols at once, see its
header) is optional: without a C compiler the install still succeeds, and
:mod:`walrus_p2p.core.merkle` hashes with the blake3 package alone.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "walrus_p2p.core._leafhash",
            sources=["walrus_p2p/core/_leafhash.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
