"""Build hook: the one C extension (ordered shared-memory operations and futex waits)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shmpiped.shm._sync",
            sources=["shmpiped/shm/_sync.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            libraries=["m"],
        )
    ],
)
