"""Decode parsed trace lines (any text format) into typed event frames, vectorised with Arrow compute.

Every text importer (tracefs, trace-cmd, perf) first turns its lines into the common columns
  ts (int64 ns), cpu, tid, comm, event, body   (+ seq, assigned by the caller)
with kprobe locations already written the tracefs way: '(sym+0x0/0x1e0 [kvm]) a=1' for an entry and
'(caller+0x74/0x90 [kvm] <- sym) ret=1' for a return. This module does the rest, identically for all.
Keep the body formats in sync with arch/x86/kvm/mmu/mmutrace.h (TP_printk of each event).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tdptrace.capture.raw import RawChunk
from tdptrace.capture.schema import MAX_LEVEL
from tdptrace.capture.waits import LCB_FLAGS, RAW_COLUMNS, WAIT_EVENTS, empty_raw
from tdptrace.errors import BadInput
from tdptrace.importers.textnum import auto_to_u64, dec_to_i64, hex_to_u64
from tdptrace.kernel.functions import (
    SPTE_CHANGE_FUNCTIONS,
    YIELD_FUNCTIONS,
    ZAP_FUNCTIONS,
)
from tdptrace.kernel.symbols import base_symbol
from tdptrace.kernel.tracefs import (
    GET_PAGE,
    PREPARE_ZAP,
    SPLIT_HUGE,
    SPTE_CHANGED,
    ZAP_ALL_FAST,
)

MARKER_EVENTS = frozenset({ZAP_ALL_FAST, SPLIT_HUGE})
# Other kvmmmu events are known and kept as markers, not counted as unknown.
KNOWN_OTHER = frozenset({
    "kvm_mmu_set_spte", "kvm_mmu_spte_requested", "kvm_mmu_pagetable_walk", "kvm_mmu_paging_element",
    "kvm_mmu_set_accessed_bit", "kvm_mmu_set_dirty_bit", "kvm_mmu_walker_error", "kvm_mmu_sync_page",
    "kvm_mmu_unsync_page", "mark_mmio_spte", "handle_mmio_page_fault", "fast_page_fault", "check_mmio_spte",
    "kvm_mmu_invalidate_gva",
})

# KVM_MMU_PAGE_PRINTK: "sp gen %u gfn %llx l%u %u-byte q%u%s %s%s %snxe %sad root %u %s%c" (+ " new"/" existing")
_SP_RE = (r"^sp gen (?P<gen>\d+) gfn (?P<gfn>[0-9a-fA-F]+) l(?P<level>\d+) .*? root (?P<root_count>\d+) "
          r"(?P<sync>unsync|sync)\S*(?: (?P<created>new|existing))?")
# Raw fields, as printed by perf/trace-cmd when they cannot format an event: "[FAILED TO PARSE] a=1 b=2"
_FAILED = "[FAILED TO PARSE]"
_KPROBE_RE = (r"^\((?P<where>(?P<loc>[^ ()]+?)(?:\+(?P<off>0x[0-9a-fA-F]+)/0x[0-9a-fA-F]+)?)(?: \[(?P<mod>[^\]]+)\])?"
              r"(?: <- (?P<sym>[^ ()]+))?\)\s*(?P<args>.*)$")

POINTER_ARGS = ("kvm", "root", "lock", "sp")
INT_ARGS = ("start", "end", "can_yield", "flush", "shared", "zap_level", "as_id", "gfn", "old_spte",
            "new_spte", "level", "ret")
ARG_ALIASES = {"gfn_start": "start", "gfn_end": "end", "retval": "ret", "arg1": "ret", "mmu_lock": "lock",
               "old": "old_spte", "new": "new_spte", "asid": "as_id"}


# Arrow-backed strings: a few bytes per value instead of a Python object each (markers can be millions).
TEXT = pd.StringDtype("pyarrow")


def _text(arr: pa.Array | pa.ChunkedArray) -> pd.Series:
    """An Arrow string column as a pandas Series without materialising Python strings."""
    return pd.Series(pd.array(arr, dtype=TEXT) if not isinstance(arr, pa.ChunkedArray)
                     else pd.arrays.ArrowStringArray(arr))


def _common(t: pa.Table) -> dict[str, np.ndarray | pd.Series]:
    return {
        "ts": t.column("ts").to_numpy(),
        "seq": t.column("seq").to_numpy(),
        "cpu": t.column("cpu").to_numpy().astype(np.int16),
        "tid": t.column("tid").to_numpy().astype(np.int32),
        "pid": np.full(t.num_rows, -1, dtype=np.int32) if "pid" not in t.column_names
        else t.column("pid").to_numpy().astype(np.int32),
        "comm": _text(t.column("comm")),
    }


def _failed_fields(body: pa.Array, names: list[str]) -> dict[str, pa.Array]:
    """Extract name=value raw fields (perf/trace-cmd '[FAILED TO PARSE]' lines)."""
    return {n: pc.struct_field(pc.extract_regex(body, rf"\b{n}=(?P<v>-?[0-9a-fA-Fx]+)"), [0]) for n in names}


def _checked(values: np.ndarray, lo: int, hi: int, what: str, event: str, bodies: pa.Array) -> np.ndarray:
    """`values` when all lie in [lo, hi]; else BadInput naming the first bad line (a level outside 1..5 or an
    as id above 255 would otherwise wrap silently in the narrow capture columns)."""
    v = np.asarray(values)
    bad = (v < lo) | (v > hi) if v.dtype.kind == "i" else (v < np.uint64(lo)) | (v > np.uint64(hi))
    if bad.any():
        raise _bad_body(event, f"{what} {v[bad][0]} is outside {lo}..{hi}: " + str(bodies[int(np.flatnonzero(bad)[0])]))
    return v


def decode_sptes(t: pa.Table) -> pd.DataFrame:
    """kvm_tdp_mmu_spte_changed lines -> SPTES frame (hex gfn and SPTE values, decimal level)."""
    body = t.column("body").combine_chunks()
    failed = pc.starts_with(body, _FAILED)
    out = _common(t)
    n = t.num_rows
    as_id = np.zeros(n, dtype=np.uint8)
    gfn = np.zeros(n, dtype=np.uint64)
    level = np.zeros(n, dtype=np.uint8)
    old = np.zeros(n, dtype=np.uint64)
    new = np.zeros(n, dtype=np.uint64)
    fmask = failed.to_numpy(zero_copy_only=False)
    if (~fmask).any():
        idx = np.flatnonzero(~fmask)
        b = body if len(idx) == n else body.take(pa.array(idx))
        # "as id %d gfn %llx level %d old_spte %llx new_spte %llx": fixed words, so split on spaces.
        w = pc.utf8_split_whitespace(b)
        words_ok = pc.equal(pc.list_value_length(w), 11)
        if pc.all(words_ok).as_py():
            tok = [pc.list_element(w, i) for i in (2, 4, 6, 8, 10)]
            shape = pc.and_(pc.and_(pc.equal(pc.list_element(w, 3), "gfn"), pc.equal(pc.list_element(w, 7),
                                                                                      "old_spte")),
                            pc.equal(pc.list_element(w, 9), "new_spte"))
            words_ok = shape
        bad = pc.invert(pc.fill_null(words_ok, False)).to_numpy(zero_copy_only=False)
        if bad.any():
            raise _bad_body(SPTE_CHANGED, b[int(np.flatnonzero(bad)[0])].as_py())
        as_id[idx] = _checked(dec_to_i64(tok[0], "as id"), 0, 255, "as id", SPTE_CHANGED, b)
        gfn[idx] = hex_to_u64(tok[1], "gfn")
        level[idx] = _checked(dec_to_i64(tok[2], "level"), 1, MAX_LEVEL, "level", SPTE_CHANGED, b)
        old[idx] = hex_to_u64(tok[3], "old_spte")
        new[idx] = hex_to_u64(tok[4], "new_spte")
    if fmask.any():
        idx = np.flatnonzero(fmask)
        b = body.take(pa.array(idx))
        f = _failed_fields(b, ["as_id", "gfn", "level", "old_spte", "new_spte"])
        as_id[idx] = _checked(auto_to_u64(f["as_id"]), 0, 255, "as_id", SPTE_CHANGED, b)
        gfn[idx] = auto_to_u64(f["gfn"])
        level[idx] = _checked(auto_to_u64(f["level"]), 1, MAX_LEVEL, "level", SPTE_CHANGED, b)
        old[idx] = auto_to_u64(f["old_spte"])
        new[idx] = auto_to_u64(f["new_spte"])
    out.update(as_id=as_id, gfn=gfn, level=level, old_spte=old, new_spte=new)
    return pd.DataFrame(out)


def decode_page_tables(t: pa.Table) -> pd.DataFrame:
    """kvm_mmu_get_page / kvm_mmu_prepare_zap_page -> PAGE_TABLES frame (kind alloc/lookup/free)."""
    body = t.column("body").combine_chunks()
    event = t.column("event").combine_chunks()
    n = t.num_rows
    out = _common(t)
    gfn = np.zeros(n, dtype=np.uint64)
    level = np.zeros(n, dtype=np.uint8)
    role = pd.array([pd.NA] * n, dtype="UInt32")
    root_count = np.zeros(n, dtype=np.int64)
    unsync = np.zeros(n, dtype=np.int8)
    gen = np.zeros(n, dtype=np.int64)
    created = np.ones(n, dtype=bool)
    fmask = pc.starts_with(body, _FAILED).to_numpy(zero_copy_only=False)
    if (~fmask).any():
        idx = np.flatnonzero(~fmask)
        m = pc.extract_regex(body.take(pa.array(idx)), _SP_RE)
        bad = m.is_null().to_numpy(zero_copy_only=False)
        if bad.any():
            raise _bad_body(event[int(idx[bad][0])].as_py(), body.take(pa.array(idx[bad][:1]))[0].as_py())
        gen[idx] = dec_to_i64(pc.struct_field(m, [0]))
        gfn[idx] = hex_to_u64(pc.struct_field(m, [1]), "gfn")
        level[idx] = _checked(dec_to_i64(pc.struct_field(m, [2])), 1, MAX_LEVEL, "level", event[int(idx[0])].as_py(),
                              body.take(pa.array(idx)))
        root_count[idx] = dec_to_i64(pc.struct_field(m, [3]))
        unsync[idx] = pc.equal(pc.struct_field(m, [4]), "unsync").to_numpy(zero_copy_only=False)
        created[idx] = ~pc.fill_null(pc.equal(pc.struct_field(m, [5]), "existing"), False).to_numpy(
            zero_copy_only=False)
    if fmask.any():
        idx = np.flatnonzero(fmask)
        f = _failed_fields(body.take(pa.array(idx)), ["mmu_valid_gen", "gfn", "role", "root_count", "unsync",
                                                       "created"])
        r = auto_to_u64(f["role"]).astype(np.uint32)
        role[idx] = r
        level[idx] = _checked(r & 0xF, 1, MAX_LEVEL, "role level", event[int(idx[0])].as_py(), body.take(pa.array(idx)))
        gfn[idx] = auto_to_u64(f["gfn"])
        gen[idx] = auto_to_u64(f["mmu_valid_gen"]).astype(np.int64)
        root_count[idx] = auto_to_u64(f["root_count"]).astype(np.int64)
        unsync[idx] = auto_to_u64(f["unsync"]).astype(np.int8)
        has_created = pc.is_valid(f["created"]).to_numpy(zero_copy_only=False)
        created[idx] = ~has_created | (auto_to_u64(f["created"]) != 0)
    is_free = pc.equal(event, PREPARE_ZAP).to_numpy(zero_copy_only=False)
    kind = np.where(is_free, "free", np.where(created, "alloc", "lookup"))
    out.update(kind=pd.array(kind, dtype="string"), gfn=gfn, level=level, role=role,
               root_count=root_count.astype(np.int32), unsync=unsync, mmu_valid_gen=gen.astype(np.int32))
    return pd.DataFrame(out)


def decode_kprobes(t: pa.Table) -> tuple[pd.DataFrame, pa.Table]:
    """Kprobe/kretprobe lines -> CALLS frame (entry or return of a symbol with its name=value arguments).

    Returns (calls, rest): lines whose body is not a kprobe location go back to the caller as `rest`.
    """
    body = t.column("body").combine_chunks()
    # Only a body starting with '(' can be a kprobe location: the regex runs on those alone.
    cand = pc.starts_with(body, "(").to_numpy(zero_copy_only=False)
    cand_idx = np.flatnonzero(cand)
    okn = np.zeros(len(body), dtype=bool)
    m = pc.extract_regex(body.take(pa.array(cand_idx)), _KPROBE_RE)
    okn[cand_idx] = m.is_valid().to_numpy(zero_copy_only=False)
    ok = pa.array(okn)
    rest = t.filter(pc.invert(ok))
    t = t.filter(ok)
    m = m.filter(m.is_valid())
    # Arrow returns "" (not null) for optional groups that did not take part in the match.
    where = pc.struct_field(m, "where")
    loc = pc.struct_field(m, "loc")
    off = pc.struct_field(m, "off")
    sym = pc.struct_field(m, "sym")
    args = pc.struct_field(m, "args")
    has_sym = pc.not_equal(sym, "")
    is_return = has_sym.to_numpy(zero_copy_only=False)
    out = _common(t)
    symbol = pd.Series(pc.if_else(has_sym, sym, loc).to_pandas(), dtype="string")
    out["symbol"] = symbol
    out["function"] = symbol.str.replace(r"\.(?:isra|constprop|part|cold|llvm)\.\d+.*$", "", regex=True)
    # Since Linux kernel commit cc66bb914578 ("x86/ibt,kprobes: Cure sym+0 equals fentry woes") (in v6.0) a
    # kprobe on a function starting with ENDBR64 (IBT kernels, e.g. Debian's 6.12) sits at sym+0x4: still entry.
    at_entry = pc.is_in(off, pa.array(["", "0x0", "0x4"])).to_numpy(zero_copy_only=False)
    out["is_return"] = is_return
    out["at_entry"] = at_entry | is_return
    out["caller"] = pd.Series(pc.if_else(has_sym, where, pa.scalar(None, pa.string())).to_pandas(),
                              dtype="string")
    # name=value arguments, whatever the user called them, normalised through ARG_ALIASES.
    names = {n: [n] + [a for a, c in ARG_ALIASES.items() if c == n] for n in POINTER_ARGS + INT_ARGS}
    for canon, aliases in names.items():
        alt = "|".join(aliases)
        v = pc.struct_field(pc.extract_regex(args, rf"(?:^|\s)(?:{alt})=(?P<v>-?(?:0x)?[0-9a-fA-F]+)\b"), [0])
        valid = pc.is_valid(v).to_numpy(zero_copy_only=False)
        vals = auto_to_u64(v, canon)
        if canon in POINTER_ARGS:
            col = pd.array(np.where(valid, vals, 0), dtype="UInt64")
        else:
            col = pd.array(vals.view(np.int64), dtype="Int64")
        col[~valid] = pd.NA
        out[f"arg_{canon}"] = col
    out["args"] = _text(args)
    return pd.DataFrame(out), rest


# lock:contention_begin "%p (flags=%s)", contention_end "%p (ret=%d)" (include/trace/events/lock.h); raw
# fields (perf/trace-cmd without the format) as lock_addr=... flags=.... kvm:kvm_page_fault "vcpu %u rip 0x%lx
# address 0x%016llx error_code 0x%llx" (6.x) or "address %lx error_code %lx" (older); kvm:kvm_entry "vcpu %u, ...".
_LOCK_RE = r"^(?:0x)?(?P<lock>[0-9a-fA-F]+) \((?:flags=(?P<flags>[A-Z|]*)|ret=(?P<ret>-?\d+))\)"
_FAULT_RE = r"^(?:vcpu (?P<vcpu>\d+) rip 0x[0-9a-fA-F]+ )?address (?:0x)?(?P<addr>[0-9a-fA-F]+) error_code (?:0x)?(?P<ec>[0-9a-fA-F]+)"
_ENTRY_RE = r"^vcpu (?P<vcpu>\d+)"


def decode_waits(t: pa.Table) -> pd.DataFrame:
    """lock:contention_begin/end, kvm:kvm_page_fault and kvm:kvm_entry lines -> raw waiter events
    (capture.waits.RAW_COLUMNS) for the WaitPairer."""
    if not t.num_rows:
        return empty_raw()
    body = t.column("body").combine_chunks()
    event = t.column("event").combine_chunks()
    out = _common(t)
    n = t.num_rows
    out["event"] = _text(event)
    lock = np.zeros(n, dtype=np.uint64)
    flags = np.zeros(n, dtype=np.int64)
    vcpu = pd.array([pd.NA] * n, dtype="Int64")
    addr = pd.array([pd.NA] * n, dtype="UInt64")
    ec = pd.array([pd.NA] * n, dtype="UInt64")
    ev = event.to_numpy(zero_copy_only=False)
    is_lock = np.isin(ev, ["contention_begin", "contention_end"])
    if is_lock.any():
        idx = np.flatnonzero(is_lock)
        b = body.take(pa.array(idx))
        m = pc.extract_regex(b, _LOCK_RE)
        ok = m.is_valid().to_numpy(zero_copy_only=False)
        raw = _failed_fields(b, ["lock_addr", "flags"])
        got_raw = pc.is_valid(raw["lock_addr"]).to_numpy(zero_copy_only=False)
        if not (ok | got_raw).all():
            raise _bad_body(str(ev[idx[~(ok | got_raw)][0]]), b[int(np.flatnonzero(~(ok | got_raw))[0])].as_py())
        text_lock = hex_to_u64(pc.fill_null(pc.struct_field(m, "lock"), "0"), "lock")
        lock[idx] = np.where(ok, text_lock, auto_to_u64(pc.fill_null(raw["lock_addr"], "0")))
        names = pc.fill_null(pc.struct_field(m, "flags"), "").to_numpy(zero_copy_only=False)
        bits = np.zeros(len(idx), dtype=np.int64)
        for name, bit in LCB_FLAGS.items():  # six flag names, not rows
            bits |= np.where(np.char.find(names.astype(str), name) >= 0, bit, 0)
        flags[idx] = np.where(ok, bits, auto_to_u64(pc.fill_null(raw["flags"], "0")).astype(np.int64))
    is_fault = ev == "kvm_page_fault"
    if is_fault.any():
        idx = np.flatnonzero(is_fault)
        b = body.take(pa.array(idx))
        m = pc.extract_regex(b, _FAULT_RE)
        ok = m.is_valid().to_numpy(zero_copy_only=False)
        if not ok.all():
            raise _bad_body("kvm_page_fault", b[int(np.flatnonzero(~ok)[0])].as_py())
        v = pc.struct_field(m, "vcpu")
        has_v = pc.not_equal(v, "").to_numpy(zero_copy_only=False)
        vv = dec_to_i64(pc.if_else(pc.equal(v, ""), "0", v))
        col = pd.array(vv, dtype="Int64")
        col[~has_v] = pd.NA
        vcpu[idx] = col
        addr[idx] = hex_to_u64(pc.struct_field(m, "addr"), "address")
        ec[idx] = hex_to_u64(pc.struct_field(m, "ec"), "error_code")
    is_entry = ev == "kvm_entry"
    if is_entry.any():
        idx = np.flatnonzero(is_entry)
        m = pc.extract_regex(body.take(pa.array(idx)), _ENTRY_RE)
        ok = m.is_valid().to_numpy(zero_copy_only=False)
        vv = dec_to_i64(pc.fill_null(pc.struct_field(m, "vcpu"), "0"))
        col = pd.array(vv, dtype="Int64")
        col[~ok] = pd.NA
        vcpu[idx] = col
    out.update(lock=pd.array(np.where(is_lock, lock, 0), dtype="UInt64"), flags=pd.array(flags, dtype="Int64"),
               vcpu=vcpu, address=addr, error_code=ec)
    df = pd.DataFrame(out)
    df.loc[~is_lock, "lock"] = pd.NA
    df.loc[~is_lock, "flags"] = pd.NA
    return df[list(RAW_COLUMNS)]


def decode_markers(t: pa.Table) -> pd.DataFrame:
    """Any other event -> MARKERS frame with its raw fields in `detail`."""
    out = _common(t)
    out["event"] = _text(t.column("event"))
    out["function"] = pd.Series(pd.array([None] * t.num_rows, dtype=TEXT))
    out["detail"] = _text(t.column("body"))
    return pd.DataFrame(out)


def _bad_body(event: str, body: str):
    return BadInput(f"cannot read a {event} line: '{body[:80]}'", "is the trace from a kernel whose format "
                    "tdptrace knows? report it with the line")


def _normalised_events(event: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Event names without the 'kvmmmu:' system (and 'lock:'/'kvm:' on the waiter events), worked out once per
    distinct name (a block holds a handful) and spread back over the rows."""
    enc = pc.dictionary_encode(event.combine_chunks() if isinstance(event, pa.ChunkedArray) else event)
    names = pc.replace_substring_regex(enc.dictionary, pattern="^kvmmmu:", replacement="")
    names = pc.replace_substring_regex(names, pattern="^(?:lock|kvm):(contention_begin|contention_end|kvm_page_fault"
                                              "|kvm_entry)$", replacement="\\1")
    return names.take(enc.indices)


_EMPTY: dict = {}


def _kprobe_calls(t: pa.Table) -> pd.DataFrame:
    return decode_kprobes(t)[0]


def _decoded(decoder, t: pa.Table) -> pd.DataFrame:
    """decoder(t), with the frame for no rows made once (most blocks hold no rows of most kinds)."""
    if t.num_rows:
        return decoder(t)
    if decoder not in _EMPTY:
        _EMPTY[decoder] = decoder(t)
    return _EMPTY[decoder].copy()


def decode(t: pa.Table) -> RawChunk:
    """Split a common-column table by event kind and decode each kind."""
    t = t.set_column(t.column_names.index("event"), "event", _normalised_events(t.column("event")))
    ev = t.column("event")
    counts = Counter(dict(zip(*[x.to_pylist() for x in pc.value_counts(ev).flatten()])))
    is_spte = pc.equal(ev, SPTE_CHANGED)
    is_spte_any = bool(pc.any(is_spte).as_py())
    is_pt = pc.is_in(ev, pa.array([GET_PAGE, PREPARE_ZAP]))
    is_wait = pc.is_in(ev, pa.array(sorted(WAIT_EVENTS)))
    sptes = _decoded(decode_sptes, t.filter(is_spte))
    page_tables = _decoded(decode_page_tables, t.filter(is_pt))
    waits = _decoded(decode_waits, t.filter(is_wait))
    other = t.filter(pc.invert(pc.or_(pc.or_(is_spte, is_pt), is_wait)))
    calls, rest = decode_kprobes(other) if other.num_rows else (_decoded(_kprobe_calls, other), other)
    # 5.10: a kprobe on __handle_changed_spte carries the SPTE change fields - only where the kernel has no
    # kvm_tdp_mmu_spte_changed tracepoint: 7.3 has a new __handle_changed_spte that fires that tracepoint itself,
    # so next to the tracepoint's events its calls are kept as markers, never counted twice.
    is_h = calls["function"].isin(SPTE_CHANGE_FUNCTIONS) & ~calls["is_return"] & (not is_spte_any)
    if is_h.any():
        h = calls[is_h]
        extra = pd.DataFrame({
            "ts": h["ts"].to_numpy(), "seq": h["seq"].to_numpy(), "cpu": h["cpu"].to_numpy(),
            "tid": h["tid"].to_numpy(), "pid": h["pid"].to_numpy(), "comm": h["comm"],
            "as_id": h["arg_as_id"].fillna(0).to_numpy(dtype=np.int64).astype(np.uint8),
            "gfn": h["arg_gfn"].fillna(0).to_numpy(dtype=np.int64).view(np.uint64),
            "level": h["arg_level"].fillna(0).to_numpy(dtype=np.int64).astype(np.uint8),
            "old_spte": h["arg_old_spte"].fillna(0).to_numpy(dtype=np.int64).view(np.uint64),
            "new_spte": h["arg_new_spte"].fillna(0).to_numpy(dtype=np.int64).view(np.uint64),
        })
        sptes = pd.concat([sptes, extra], ignore_index=True).sort_values("seq", kind="stable",
                                                                           ignore_index=True)
        calls = calls[~is_h].reset_index(drop=True)
    markers = decode_markers(rest)
    rest_events = pd.Series(markers["event"])
    unknown = Counter(rest_events[~rest_events.isin(MARKER_EVENTS | KNOWN_OTHER)].value_counts().to_dict())
    # Kprobes on functions tdptrace does not model are kept as markers too (function named).
    interesting = calls["function"].isin(ZAP_FUNCTIONS | YIELD_FUNCTIONS) & calls["at_entry"]
    if (~interesting).any():
        odd = calls[~interesting]
        markers = pd.concat([markers, pd.DataFrame({
            "ts": odd["ts"], "seq": odd["seq"], "cpu": odd["cpu"], "tid": odd["tid"], "pid": odd["pid"],
            "comm": odd["comm"], "event": np.where(odd["is_return"], "return", "call"),
            "function": odd["function"], "detail": odd["args"],
        })], ignore_index=True)
        calls = calls[interesting].reset_index(drop=True)
    return RawChunk(sptes=sptes, calls=calls, page_tables=page_tables, markers=markers, counts=counts,
                    unknown=unknown, from_handle_changed_spte=bool(is_h.any() and not is_spte_any), waits=waits)


def zap_function(symbol: str) -> bool:
    """True when `symbol` (possibly a compiler copy) is a zap function."""
    return base_symbol(symbol) in ZAP_FUNCTIONS
