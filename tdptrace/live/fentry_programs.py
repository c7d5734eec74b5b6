"""fentry/fexit programs for the functions a plan attaches that way: small generated C stubs that hand the
BTF-typed argument array to the same span_begin/span_end/yield_begin/yield_end the kprobes call.

BCC names a trampoline program after its target (kfunc__NAME), so the target's name must be in the text.
Only names the kernel's BTF describes reach it, each checked to be a plain C identifier, and integers
(function slot, argument count); nothing from the command line. An fentry program may read only the
arguments BTF declares and, at exit, the return value in the slot after them: the stubs read exactly those.
"""
from __future__ import annotations

import re

from tdptrace.errors import TdpError
from tdptrace.live.attach import ProbePlan, SpanFunction

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Yield function -> its flavour bit (probes/record.h TDP_F_YIELD_*).
YIELD_FLAGS: dict[str, str] = {
    "__cond_resched_rwlock_read": "TDP_F_YIELD_READ", "__cond_resched_rwlock_write": "TDP_F_YIELD_WRITE",
    "__cond_resched_lock": "TDP_F_YIELD_SPIN",
}
ARG_SLOTS = 6  # struct regs6: the arguments span_begin reads
_NOW = "bpf_get_current_pid_tgid(), bpf_ktime_get_ns()"


def _ident(name: str) -> str:
    if not _IDENT.match(name):
        raise TdpError(f"refusing to generate an fentry program for {name!r}: not a C identifier")
    return name


def _span_stub(i: int, f: SpanFunction) -> list[str]:
    r = f.resolved
    assert r is not None and r.params is not None
    name, nargs = _ident(f.symbol), len(r.params)
    reads = " ".join(f"r.r[{j}] = ctx[{j}];" for j in range(min(nargs, ARG_SLOTS)))
    ret = "0" if r.returns in (None, "void") else f"(s64)ctx[{int(nargs)}]"
    return [
        f"KFUNC_PROBE({name}) {{ struct regs6 r = {{}}; {reads} return span_begin(ctx, {_NOW}, {int(i)}, &r); }}",
        f"KRETFUNC_PROBE({name}) {{ return span_end(ctx, {_NOW}, {int(i)}, {ret}); }}",
    ]


def _yield_stub(name: str, nargs: int) -> list[str]:
    name = _ident(name)
    return [
        f"KFUNC_PROBE({name}) {{ return yield_begin(ctx, {_NOW}, ctx[0], {YIELD_FLAGS[name]}); }}",
        f"KRETFUNC_PROBE({name}) {{ return yield_end(ctx, {_NOW}, (int)ctx[{int(nargs)}]); }}",
    ]


def fentry_stubs(plan: ProbePlan) -> str:
    """The C text of the plan's fentry/fexit programs ('' when it attaches everything with kprobes)."""
    lines: list[str] = []
    for i, f in enumerate(plan.span_functions):
        if f.method == "fentry":
            lines += _span_stub(i, f)
    for name in plan.yield_functions:
        if plan.yield_methods.get(name) == "fentry":
            r = plan.arguments[name] if plan.arguments is not None else None
            if r is None or r.params is None or r.index("lock") != 0:
                raise TdpError(f"fentry on {name} needs its BTF parameters (lock first)")
            lines += _yield_stub(name, len(r.params))
    if not lines:
        return ""
    return "\n#if TDP_WITH_SPANS\n/* fentry/fexit stubs generated from BTF (tdptrace/live/fentry_programs.py) */\n" + \
        "\n".join(lines) + "\n#endif\n"
