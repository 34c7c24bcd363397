"""The one compiled part: trace affinity's byte split (gateway/service/_affinity_split.c).

Optional: where no C compiler is at hand (a slim container image), `pip install` goes on without
it and otelgate uses the pure-Python split, which gives the same result (tests hold the two to
it); `OTELGATE_PURE_PYTHON=1` chooses the Python one where both are there. Everything else is in
pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("gateway.service._affinity_split", ["gateway/service/_affinity_split.c"],
                             optional=True, extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
