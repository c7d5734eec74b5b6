"""The probes' headers and the Python that mirrors them agree, and every program compiles with every setting.

- Every #define of probes/record.h and probes/stats.h is in RECORD_H / STATS_H with the same value, and the
  other way round (read with the C preprocessor, gcc -E -dM: no root needed).
- The SPTE constants of probes/spte.bpf.h are those of tdptrace/kernel/spte.py, and its functions, run in the
  kernel on a table of SPTE values of every era, answer as spte.py does.
- Every struct Python reads has the sizes and offsets of its numpy dtype, as BCC compiles it.
- The settings each program reads are exactly those Python passes, and BCC compiles and the verifier loads
  every combination of them the recorder and `top` can produce (this host has no kprobes: nothing attaches).
The BCC parts need root and bcc; the comparisons are also run on a deliberately broken copy, to show they fail.
"""
from __future__ import annotations

import ast
import ctypes
import itertools
import operator
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tdptrace.kernel import spte
from tdptrace.kernel.spte import Encoding
from tdptrace.live import programs
from tdptrace.live.attach import TRACEPOINT_DEFINES, YIELD_PROGRAMS, ProbePlan, SpanFunction
from tdptrace.live.bcc_recorder import BENCH_PROGRAM, PROGRAM, SELFTEST_PROGRAM, program_defines, program_for
from tdptrace.live.recording import RecordOptions
from tdptrace.live.records import EVENT, EVENT_PAGE, EVENT_YIELD, FUNC_ARGS, RECORD_H, SPAN, YIELD_FUNCTION
from tdptrace.live.stats import _SLICES, REPLAY_EVENT, REPLAY_PROGRAM, STATS_FIELDS, STATS_H, stats_defines
from tdptrace.live.stats import PROGRAM as STATS_PROGRAM

PROBES = programs.probes_dir()
SYS_GETPID = 39  # x86-64

# ---- the C preprocessor's view of a header -------------------------------------------------------------


def _gcc() -> str:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler driver (gcc) to run the preprocessor with")
    return gcc


def _cpp(args: list[str], text: str) -> str:
    return subprocess.run([_gcc(), "-E", "-P", "-x", "c", *args, "-"], input=text, capture_output=True, text=True,
                          check=True).stdout


_INT = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.LShift: operator.lshift,
        ast.RShift: operator.rshift, ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.BitXor: operator.xor}


def _value(expr: str) -> int:
    """An integer constant expression as the preprocessor expanded it ('(2 * 5)', '(1ULL << 11)')."""

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(f"not an integer constant: {expr!r}")

    return ev(ast.parse(_INT.sub(lambda m: str(int(m.group(1), 0)), expr), mode="eval").body)


def header_macros(header: Path, defines: dict[str, int] | None = None) -> dict[str, int]:
    """Every object-like macro `header` defines (include guard aside), with its integer value."""
    flags = [f"-I{header.parent}"] + [f"-D{k}={v}" for k, v in (defines or {}).items()]
    base = set(re.findall(r"^#define (\w+)", _cpp(["-dM", *flags], ""), re.M))
    own = _cpp(["-dM", *flags], f'#include "{header}"\n')
    names = [n for n in re.findall(r"^#define (\w+)[ \n]", own, re.M) if n not in base and not n.endswith("_H")]
    expanded = _cpp(flags, f'#include "{header}"\n' + "".join(f'@@ "{n}" {n}\n' for n in names))
    values = dict(re.findall(r'^@@ "(\w+)" (.+)$', expanded, re.M))
    return {n: _value(values[n]) for n in names}


def _diff(want: dict[str, int], got: dict[str, int]) -> list[str]:
    out = [f"{k}: Python {want[k]:#x}, header {got[k]:#x}" for k in want if k in got and want[k] != got[k]]
    out += [f"{k}: in Python, not in the header" for k in want if k not in got]
    out += [f"{k}: in the header, not in Python" for k in got if k not in want]
    return out


def test_record_h_defines_are_exactly_records_py_RECORD_H():
    assert _diff(RECORD_H, header_macros(PROBES / "record.h")) == []


def test_stats_h_defines_are_exactly_stats_py_STATS_H():
    assert _diff(STATS_H, header_macros(PROBES / "stats.h")) == []


def test_a_header_drifting_from_python_is_caught(tmp_path):
    h = (PROBES / "record.h").read_text()
    assert "#define TDP_KIND_SPLIT 5 " in h and "#define TDP_MAX_PIDS 1024\n" in h
    (tmp_path / "record.h").write_text(h.replace("#define TDP_KIND_SPLIT 5 ", "#define TDP_KIND_SPLIT 9 ")
                                       .replace("#define TDP_MAX_PIDS 1024\n", "#define TDP_MAX_PID 1024\n"))
    assert _diff(RECORD_H, header_macros(tmp_path / "record.h")) == [
        "TDP_KIND_SPLIT: Python 0x5, header 0x9", "TDP_MAX_PIDS: in Python, not in the header",
        "TDP_MAX_PID: in the header, not in Python"]


# spte.bpf.h constant -> the value tdptrace/kernel/spte.py (or the simulator writing traces) decides by.
def _spte_mirror() -> dict[str, int]:
    return {
        "PT64_ROOT_MAX_LEVEL": spte.MAX_LEVEL, "SPTE_ENT_PER_PAGE": spte.ENTRIES_PER_TABLE,
        "SPTE_LEVEL_BITS": int(np.log2(spte.ENTRIES_PER_TABLE)),
        "ROLE_LEVEL_MASK": 0xF,  # importers/decode.py reads a page table's level as role & 0xF
        "SPTE_MMU_PRESENT_MASK": int(spte.SPTE_MMU_PRESENT_MASK), "PT_PAGE_SIZE_MASK": int(spte.PT_PAGE_SIZE_MASK),
        "LEGACY_SPECIAL_MASK": int(spte.LEGACY_SPECIAL_MASK), "LEGACY_MMIO_VALUE": int(spte.LEGACY_MMIO_VALUE),
        "LEGACY_REMOVED_SPTE": int(spte.LEGACY_REMOVED_SPTE),
        # the markers by era, Debian's 7.3.4 build's included
        "REMOVED_SPTE_5_13": spte.REMOVED_SPTE_5_13, "FROZEN_SPTE_6_10": spte.FROZEN_SPTE_6_10,
        "SHADOW_NONPRESENT_VALUE": spte.SHADOW_NONPRESENT_VALUE, "FROZEN_SPTE_7_3": spte.FROZEN_SPTE_7_3,
    }


def test_spte_bpf_h_constants_are_kernel_spte_py():
    from tdptrace.sim.strategies import FourPass, Strategy

    # the simulator writes the markers spte.py knows
    assert (Strategy.removed_spte, FourPass.removed_spte, FourPass.nonpresent_spte) == (
        spte.REMOVED_SPTE_5_13, spte.FROZEN_SPTE_6_10, spte.SHADOW_NONPRESENT_VALUE)
    for present_bit in (0, 1):
        assert _diff(_spte_mirror(), header_macros(PROBES / "spte.bpf.h", {"TDP_PRESENT_BIT": present_bit})) == []


def test_spte_bpf_h_refuses_to_compile_without_its_era():
    run = subprocess.run([_gcc(), "-E", "-x", "c", "-"], input=f'#include "{PROBES / "spte.bpf.h"}"\n',
                         capture_output=True, text=True)
    assert run.returncode != 0 and "TDP_PRESENT_BIT is not set" in run.stderr


# ---- which settings each program reads -----------------------------------------------------------------

_SETTING = re.compile(r"\bTDP_[A-Z0-9_]+\b")


def _settings_read(name: str) -> set[str]:
    """TDP_* names a program uses that neither it nor its shared header defines: the settings it reads."""
    src = re.sub(r"/\*.*?\*/|//[^\n]*", " ", programs.program_source(name), flags=re.S)  # code, not comments
    own = set(re.findall(r"^[ \t]*#[ \t]*define[ \t]+(TDP_\w+)", src, re.M))
    return set(_SETTING.findall(src)) - own - set(RECORD_H)


def _record_inputs(spans=True, sptes=True, pids=True, stacks=True, yields=True, release="6.1.0-56-amd64",
                   tracepoints=tuple(TRACEPOINT_DEFINES)) -> tuple[ProbePlan, RecordOptions]:
    plan = ProbePlan(release=release, tracefs=None, tracepoints=list(tracepoints), kprobes=spans, fentry=False,
                     span_functions=[SpanFunction("tdp_mmu_zap_leafs", "tdp_mmu_zap_leafs",
                                                  ("kvm", "root", "start", "end", "can_yield", "flush"))]
                     if spans else [],
                     yield_functions=["__cond_resched_rwlock_read"] if yields else [],
                     vmm_calls=[SpanFunction("kvm_arch_init_vm", "kvm_arch_init_vm", ("kvm", "type"))])
    opts = RecordOptions(output=None, pids=(1,) if pids else (), sptes=sptes, stacks=stacks)  # type: ignore[arg-type]
    return plan, opts


def test_each_program_reads_exactly_the_settings_python_passes():
    plan, opts = _record_inputs()
    d = program_defines(plan, opts)
    assert program_for(d) == PROGRAM and _settings_read(PROGRAM) == set(d)
    d = program_defines(plan, opts, selftest_tgid=os.getpid())
    assert program_for(d) == SELFTEST_PROGRAM and _settings_read(SELFTEST_PROGRAM) == set(d)
    d = program_defines(plan, opts, bench_tgid=os.getpid())
    assert program_for(d) == BENCH_PROGRAM and _settings_read(BENCH_PROGRAM) <= set(d)
    assert "TDP_BENCH_TGID" in _settings_read(BENCH_PROGRAM)
    s = stats_defines(Encoding.PRESENT_BIT, spans=True, tdp_tracepoint=True)
    assert _settings_read(STATS_PROGRAM) == set(s)
    assert _settings_read(REPLAY_PROGRAM) <= set(s)
    # a setting can never be redefined by a header constant of the same name
    assert not set(RECORD_H) & (set(d) | set(program_defines(plan, opts)))
    assert not set(STATS_H) & set(s)


def test_production_programs_hold_no_test_handlers():
    src = programs.program_source(PROGRAM)
    assert set(re.findall(r"TRACEPOINT_PROBE\((\w+),", src)) == {"kvmmmu"}
    assert "raw_syscalls" not in src and "TDP_SELFTEST_TGID" not in src and "TDP_BENCH_TGID" not in src
    stats = programs.program_source(STATS_PROGRAM)
    assert set(re.findall(r"TRACEPOINT_PROBE\((\w+),", stats)) == {"kvmmmu"} and "xdp_md" not in stats


def test_attach_tables_match_the_programs_that_use_them():
    """attach.py's tracepoint switches and yield programs are the ones record.bpf.c defines, and the flavour
    each yield program stamps decodes to the function it is attached to."""
    src = (PROBES / PROGRAM).read_text()
    switches = dict((tp, sw) for sw, tp in re.findall(r"#if (TDP_TP_\w+)(?: && !TDP_RAW_SPTE)?\nTRACEPOINT_PROBE\(kvmmmu, (\w+)\)", src))
    assert switches == TRACEPOINT_DEFINES
    stamps = dict(re.findall(r"int (yield_entry_\w+)\(struct pt_regs \*ctx\) \{ return on_yield_entry\(ctx, (\w+)\)",
                             src))
    assert {fn: YIELD_FUNCTION[RECORD_H[stamps[prog]]] for fn, prog in YIELD_PROGRAMS.items()} == \
        {fn: fn for fn in YIELD_PROGRAMS}
    assert len(re.findall(r"SPAN_PROBES\(\d+\)", src)) == RECORD_H["TDP_MAX_FUNCS"]


def test_program_source_splices_each_header_once_and_keeps_lines(tmp_path):
    src = programs.program_source(PROGRAM)
    assert '#include "' not in src
    for h in ("record.h", "spte.bpf.h", "record_transport.bpf.h", "record_tables.bpf.h", "record_spans.bpf.h",
              "record_handlers.bpf.h"):
        assert src.count(f'#line 1 "{h}"') == 1, h
    # after each spliced header the program's own line numbers resume
    lines = (PROBES / PROGRAM).read_text().splitlines()
    n = next(i for i, line in enumerate(lines, 1) if line.startswith('#include "record_handlers.bpf.h"'))
    assert f'#line {n + 1} "{PROGRAM}"' in src
    (tmp_path / "a.bpf.c").write_text('#include "../etc/passwd.h"\n')
    with pytest.raises(ValueError, match="only headers next to the program"):
        programs.program_source("a.bpf.c", tmp_path)
    (tmp_path / "b.bpf.c").write_text('#include "missing.h"\n')
    with pytest.raises(FileNotFoundError):
        programs.program_source("b.bpf.c", tmp_path)


def test_program_text_is_the_settings_then_the_source():
    plan, opts = _record_inputs()
    d = program_defines(plan, opts)
    text = programs.program_text(PROGRAM, d)
    head, body = text.split("\n\n", 1)
    assert head.splitlines() == [f"#define {k} {v}" for k, v in d.items()]
    assert body == programs.program_source(PROGRAM)
    with pytest.raises(TypeError):
        programs.program_text(PROGRAM, {"TDP_WITH_SPTES": "1); evil("})  # type: ignore[dict-item]


# ---- BCC: struct layouts, the SPTE rules in the kernel, every setting compiled ---------------------------


def _bpf():
    if os.geteuid() != 0:
        pytest.skip("compiling and loading BPF needs root")
    try:
        from bcc import BPF
    except ImportError:
        pytest.skip("bcc (python3-bpfcc) is not installed")
    programs.bcc_compat(BPF)
    return BPF


def _fields(ctype) -> dict[str, tuple[int, int]]:
    return {name: (getattr(ctype, name).offset, getattr(ctype, name).size) for name, _ in ctype._fields_}


LAYOUT = """
#include "record.h"
#include "stats.h"
BPF_ARRAY(layout_event, struct tdp_event, 1);
BPF_ARRAY(layout_span, struct tdp_span, 1);
BPF_ARRAY(layout_func_args, struct tdp_func_args, 1);
BPF_ARRAY(layout_vm_stats, struct vm_stats, 1);
BPF_ARRAY(layout_replay_event, struct replay_event, 1);
BPF_ARRAY(layout_comm_name, struct comm_name, 1);
BPF_HASH(layout_table_key, struct table_key, u8, 1);
"""


def _layout_problems(BPF, directory: Path) -> list[str]:
    """Every difference between the structs as BCC compiles them (headers from `directory`) and the dtypes."""
    (directory / "layout.bpf.c").write_text(LAYOUT)
    b = BPF(text=programs.program_source("layout.bpf.c", directory).encode())
    out: list[str] = []

    def check(what: str, fields: dict[str, tuple[int, int]], dtype: np.dtype, base: int = 0) -> None:
        for name, (off, size) in fields.items():
            if name == "pad":
                continue
            if name not in dtype.fields:
                out.append(f"{what}.{name}: not in the dtype")
            elif (base + off, size) != (dtype.fields[name][1], dtype.fields[name][0].itemsize):
                out.append(f"{what}.{name}: header at {base + off} ({size} bytes), dtype at "
                           f"{dtype.fields[name][1]} ({dtype.fields[name][0].itemsize} bytes)")

    try:
        ev = b[b"layout_event"].Leaf
        for dt in (EVENT, EVENT_PAGE, EVENT_YIELD):
            if ctypes.sizeof(ev) != dt.itemsize:
                out.append(f"tdp_event: {ctypes.sizeof(ev)} bytes, dtype {dt.itemsize}")
        head = _fields(ev)
        check("tdp_event", {k: v for k, v in head.items() if k != "u"}, EVENT)
        union = dict(ev._fields_)["u"]
        for member, dt in (("spte", EVENT), ("page", EVENT_PAGE), ("yield", EVENT_YIELD)):
            check(f"tdp_event.u.{member}", _fields(dict(union._fields_)[member]), dt, head["u"][0])
        for leaf, dt in ((b"layout_span", SPAN), (b"layout_func_args", FUNC_ARGS),
                         (b"layout_replay_event", REPLAY_EVENT)):
            c = b[leaf].Leaf
            if ctypes.sizeof(c) != dt.itemsize:
                out.append(f"{leaf.decode()}: {ctypes.sizeof(c)} bytes, dtype {dt.itemsize}")
            check(leaf.decode(), _fields(c), dt)
        vm = b[b"layout_vm_stats"].Leaf
        words = {name: (8 * _SLICES[name].start, 8 * n) for name, n in STATS_FIELDS}
        if _fields(vm) != words or ctypes.sizeof(vm) != 8 * sum(n for _, n in STATS_FIELDS):
            out.append(f"vm_stats: header {_fields(vm)}, STATS_FIELDS {words}")
        if ctypes.sizeof(b[b"layout_comm_name"].Leaf) != RECORD_H["TDP_COMM_LEN"]:
            out.append("comm_name: not a comm")
        if "vm" not in _fields(b[b"layout_table_key"].Key):  # StatsReader forgets a gone VM's tables by it
            out.append("table_key: no vm")
    finally:
        b.cleanup()
    return out


def _copy_headers(tmp_path: Path) -> Path:
    for h in ("record.h", "stats.h"):
        shutil.copy(PROBES / h, tmp_path / h)
    return tmp_path


@pytest.mark.live
def test_structs_as_compiled_have_the_layout_of_their_dtypes(tmp_path):
    assert _layout_problems(_bpf(), _copy_headers(tmp_path)) == []


@pytest.mark.live
def test_a_struct_drifting_from_its_dtype_is_caught(tmp_path):
    BPF = _bpf()
    d = _copy_headers(tmp_path)
    h = (d / "record.h").read_text()
    assert "\t__u32 yields;\n\t__u32 lock_drops;\n" in h
    (d / "record.h").write_text(h.replace("\t__u32 yields;\n\t__u32 lock_drops;\n",
                                          "\t__u32 lock_drops;\n\t__u32 yields;\n"))
    s = (d / "stats.h").read_text()
    assert "\t__u64 spans;" in s
    (d / "stats.h").write_text(s.replace("\t__u64 spans;", "\t__u32 spans;"))
    problems = _layout_problems(BPF, d)
    assert any(p.startswith("layout_span.yields: header at 188") for p in problems), problems
    assert any(p.startswith("vm_stats:") for p in problems), problems


SPTE_CHECK = """
#include "spte.bpf.h"
struct answer {
	u64 seq;
	u64 base;
	u8 present;
	u8 present_bit;
	u8 present_legacy;
	u8 leaf;
	u32 role_level;
};
BPF_ARRAY(answer, struct answer, 1);

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
	if ((bpf_get_current_pid_tgid() >> 32) != TDP_TEST_TGID || args->id != 39)
		return 0;
	if ((u64)args->args[5] != TDP_TEST_MAGIC)
		return 0;
	int zero = 0;
	struct answer *a = answer.lookup(&zero);
	if (!a)
		return 0;
	u64 s = args->args[0], gfn = args->args[2];
	u32 level = args->args[1];
	a->seq = args->args[3];
	a->present = spte_present(s);
	a->present_bit = spte_present_bit(s);
	a->present_legacy = spte_present_legacy(s);
	a->leaf = spte_leaf(s, level);
	a->base = table_base(gfn, level);
	a->role_level = role_level(args->args[4]);
	return 0;
}
"""
SPTE_CHECK_MAGIC = 0x7370746563686B21  # marks the test's own getpid() calls for SPTE_CHECK
B, L = Encoding.PRESENT_BIT, Encoding.LEGACY
# (what, SPTE, level, {era: present as the kernel of that era decides}); every value also goes through the
# other era's rule, compared with spte.py only.
SPTE_TABLE: list[tuple[str, int, int, dict[Encoding, bool]]] = [
    ("6.1 4K leaf", 0x2BBDE67, 1, {B: True}),
    ("6.1 2M leaf", 0x13800EE7, 2, {B: True}),
    ("6.1 non-leaf (L2)", 0x12C86827, 2, {B: True}),
    ("6.1 non-leaf (L4 root entry)", 0x1344A827, 4, {B: True}),
    ("6.10+ leaf with bit 63", 0x8000000002BBDE67, 1, {B: True}),
    ("1G leaf", 0x40000EE7, 3, {B: True}),
    ("0", 0, 1, {B: False, L: False}),
    ("REMOVED_SPTE 5.13-6.9", 0x5A0, 1, {B: False}),
    ("FROZEN_SPTE 6.10+", 0x80000000000005A0, 2, {B: False}),
    ("FROZEN_SPTE Debian 7.3.4", 0x80000000000001A0, 3, {B: False}),
    ("non-present 6.10+", 1 << 63, 1, {B: False}),
    ("MMIO 5.13+ (no bit 11)", (3 << 52) | 0x3E6, 1, {B: False}),
    ("5.10 leaf (no bit 11)", 0x2BBD677, 1, {L: True, B: False}),
    ("5.10 non-leaf (no bit 11)", 0x12C86027, 2, {L: True, B: False}),
    ("5.10 2M leaf", 0x13800677, 2, {L: True}),
    ("5.10 MMIO", (3 << 52) | 0x1000 | 0x6, 1, {L: False}),
    ("5.11 REMOVED_SPTE", 1 << 59, 1, {L: False, B: False}),
    ("bits 53:52 = 01 (not MMIO)", (1 << 52) | 0x677, 1, {L: True}),
]
GFNS = (0, 0x1FF, 0x4000, 0x12345678, 0xFFFFFFFFF)


def _ask(answer, calls: list[tuple[int, int, int, int]]) -> list[tuple]:
    """Each (spte, level, gfn, role) through the BPF functions, one getpid() each."""
    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall
    syscall.argtypes = [ctypes.c_long] + [ctypes.c_uint64] * 6
    out = []
    for seq, (s, level, gfn, role) in enumerate(calls, start=1):
        syscall(SYS_GETPID, s, level, gfn, seq, role, SPTE_CHECK_MAGIC)
        a = answer[ctypes.c_int(0)]
        assert a.seq == seq, "the check program did not see the syscall"
        out.append((bool(a.present), bool(a.present_bit), bool(a.present_legacy), bool(a.leaf), int(a.base),
                    int(a.role_level)))
    return out


@pytest.mark.live
@pytest.mark.parametrize("encoding", [Encoding.PRESENT_BIT, Encoding.LEGACY])
def test_spte_rules_in_the_kernel_answer_as_kernel_spte_py(encoding):
    BPF = _bpf()
    text = SPTE_CHECK.replace('#include "spte.bpf.h"\n', programs.program_source("spte.bpf.h"))
    b = BPF(text=text.encode(), cflags=programs.cflags({"TDP_PRESENT_BIT": int(encoding == Encoding.PRESENT_BIT),
                                                        "TDP_TEST_TGID": os.getpid(),
                                                        "TDP_TEST_MAGIC": SPTE_CHECK_MAGIC}))
    calls = [(s, level, gfn, 0x1E0 | level) for _, s, level, _ in SPTE_TABLE for gfn in GFNS] + \
            [(0x677, level, gfn, 0x300 | level) for level in range(0, spte.MAX_LEVEL + 1) for gfn in GFNS]
    try:
        got = _ask(b[b"answer"], calls)
    finally:
        b.cleanup()
    s, level, gfn, role = (np.array(c, dtype=np.uint64) for c in zip(*calls))
    want = list(zip(spte.is_present(s, encoding).tolist(), spte.is_present(s, Encoding.PRESENT_BIT).tolist(),
                    spte.is_present(s, Encoding.LEGACY).tolist(), spte.is_leaf(s, level).tolist(),
                    spte.table_base(gfn, level).astype(np.int64).tolist(), (role & np.uint64(0xF)).tolist()))
    wrong = [(f"spte {c[0]:#x} level {c[1]} gfn {c[2]:#x}", "spte.py", w, "BPF", g)
             for c, w, g in zip(calls, want, got) if w != g]  # (present, bit rule, legacy rule, leaf, base, level)
    assert wrong == []
    # and both are right: what each era's kernel decides for these values
    for i, (what, _, _, era) in enumerate(SPTE_TABLE):
        for enc, present in era.items():
            assert got[i * len(GFNS)][1 if enc == Encoding.PRESENT_BIT else 2] is present, (what, enc)


def _no_attach(BPF):
    """A BPF class that compiles and loads but attaches nothing (BCC attaches TRACEPOINT_PROBEs on load)."""
    return type("NoAttachBPF", (BPF,), {"_trace_autoload": lambda self: None})


def _compile_and_verify(cls, BPF, name: str, defines: dict[str, int]) -> int:
    """Compile `name` with `defines` and pass every program in it through the verifier; how many there were."""
    from bcc import lib

    b = programs.load(name, defines, cls)
    try:
        fns = [lib.bpf_function_name(b.module, i) for i in range(lib.bpf_num_functions(b.module))]
        for fn in fns:
            b.load_func(fn, BPF.TRACEPOINT if fn.startswith(b"tracepoint__") else BPF.KPROBE)
        return len(fns)
    finally:
        b.cleanup()


RELEASES = ("5.4.0", "5.10.0-32-amd64", "6.1.0-56-amd64")  # perf buffer + legacy SPTEs, ring + legacy, ring + bit 11
# the kvmmmu tracepoints of 5.15-6.x (no split before 5.17), of 5.10 (no spte_changed either), none
TRACEPOINT_SETS = (tuple(TRACEPOINT_DEFINES), tuple(t for t in TRACEPOINT_DEFINES if t != "kvm_mmu_split_huge_page"),
                   ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_zap_all_fast"), ())


def record_setting_combinations() -> list[dict[str, int]]:
    """Every distinct set of settings program_defines gives for record.bpf.c: each switch of the plan and the
    options, on each kind of release, with every tracepoint; then each tracepoint set once."""
    out: dict[tuple, dict[str, int]] = {}
    for release, spans, sptes, pids, stacks, yields in itertools.product(RELEASES, *[(False, True)] * 5):
        d = program_defines(*_record_inputs(spans, sptes, pids, stacks, yields, release))
        out.setdefault(tuple(sorted(d.items())), d)
    for tps in TRACEPOINT_SETS[1:]:
        d = program_defines(*_record_inputs(tracepoints=tps))
        out.setdefault(tuple(sorted(d.items())), d)
    return list(out.values())


@pytest.mark.live
def test_record_programs_compile_and_verify_with_every_setting_the_recorder_produces():
    """The kprobe programs cannot attach on a kernel without kprobes, but they must compile and verify."""
    BPF = _bpf()
    cls = _no_attach(BPF)
    combos = record_setting_combinations()
    assert len(combos) == 3 * (2 * 2 + 2 * 2 * 2 * 2) + 3  # spans off: sptes x pids; on: x stacks x yields
    for d in combos:
        n = _compile_and_verify(cls, BPF, PROGRAM, d)
        assert n == sum(d[t] for t in TRACEPOINT_DEFINES.values()) + (2 * d["TDP_SPAN_FUNCS"] + 4 + d["TDP_VMM_CALLS"] if d["TDP_WITH_SPANS"] else 0), d
    for release in RELEASES:
        plan, opts = _record_inputs(release=release)
        assert _compile_and_verify(cls, BPF, SELFTEST_PROGRAM, program_defines(plan, opts, selftest_tgid=1)) == 1
        assert _compile_and_verify(cls, BPF, BENCH_PROGRAM, program_defines(plan, opts, bench_tgid=1)) == 1


@pytest.mark.live
def test_stats_programs_compile_and_verify_with_every_setting_top_produces():
    BPF = _bpf()
    cls = _no_attach(BPF)
    for enc, spans, tp, pid in itertools.product((Encoding.PRESENT_BIT, Encoding.LEGACY), *[(False, True)] * 3):
        d = stats_defines(enc, spans=spans, tdp_tracepoint=tp, pid=4321 if pid else 0)
        assert _compile_and_verify(cls, BPF, STATS_PROGRAM, d) == 3 + tp + (5 if spans else 0), d
    from bcc import BPF as RealBPF

    d = stats_defines(Encoding.LEGACY, spans=False, tdp_tracepoint=False)
    b = programs.load(REPLAY_PROGRAM, d, RealBPF)
    try:
        b.load_func(b"replay", RealBPF.XDP)
    finally:
        b.cleanup()
