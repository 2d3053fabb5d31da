"""Build of the Cython extensions (everything else is in pyproject.toml)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("uniws._fastpath", ["uniws/_fastpath.pyx"], extra_compile_args=["-O2"]),
    Extension("uniws._shmring", ["uniws/_shmring.pyx"], extra_compile_args=["-O2"]),
]

setup(ext_modules=cythonize(extensions, language_level=3, compiler_directives={"embedsignature": True}))
