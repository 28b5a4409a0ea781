"""Build script for the one C helper; everything else is in pyproject.toml.

``walrus_p2p/core/_native.c`` (keyed blake3 of many equal-length symbols at once, and a loop
that runs the ISA-L kernel block by block; see its header and :mod:`walrus_p2p.core.native`)
is optional: without a C compiler the install still succeeds, and the package runs on the
blake3 package and Python loops alone.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "walrus_p2p.core._native",
            sources=["walrus_p2p/core/_native.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
