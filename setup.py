"""The one compiled part of actorflow: native sealing of encrypted values (optional).

Everything else is in pyproject.toml. The extension links the system's libcrypto (OpenSSL 3);
where it cannot be built (no compiler, no OpenSSL headers) the install goes on without it and
``crypto.py`` seals in Python, byte for byte the same envelopes, only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "actorflow.runtime._sealer",
            sources=["src/actorflow/runtime/_sealer.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
