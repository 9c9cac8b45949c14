"""Run Megatron-LM's tools/preprocess_data.py unchanged on a CPU machine without triton.

    python bench/_megatron_launch.py MEGATRON_LM/tools/preprocess_data.py ARGS...

megatron-core imports triton (a GPU kernel compiler) at module level in kernels that preprocessing never
calls. This launcher lets torch settle that triton is absent first (so it never tries to use one), then
puts an empty stand-in module under the name `triton` (version 0.0.0, which megatron-core's own checks
treat as "no usable triton") and runs the script as `__main__`. Only bench/bench_preprocess.py
--megatron-lm uses it.
"""

from __future__ import annotations

import runpy
import sys
import types

import torch._dynamo  # noqa: F401  (each of these imports triton when it can: done while it cannot)
import torch._dynamo.debug_utils  # noqa: F401
import torch._inductor.codecache  # noqa: F401
import torch._inductor.compile_fx  # noqa: F401


class _Anything:
    """Any attribute, any call: what a decorator or annotation from the stand-in evaluates to."""

    def __getattr__(self, name: str) -> "_Anything":
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _Anything()


def _stand_in(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def attribute(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Anything()

    module.__getattr__ = attribute  # type: ignore[method-assign]
    return module


def main() -> None:
    triton = _stand_in("triton")
    triton.__version__ = "0.0.0"
    triton.language = _stand_in("triton.language")
    sys.modules.update({"triton": triton, "triton.language": triton.language})
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
