"""What libtraceevent (used by trace-cmd report and perf script) prints differently from tracefs, rewritten into
the tracefs wording that decode.py reads:

- kprobe locations are raw addresses, from the event's print fmt (kernel/trace/trace_probe.c __set_print_fmt):
  entry "(%lx)" of __probe_ip, return "(%lx <- %lx)" of __probe_func then __probe_ret_ip - the probed
  function FIRST, unlike tracefs' "(caller+0x74/0x90 [kvm] <- func)". Named with kallsyms or kprobe_events.
- trace-cmd's kvm plugin (lib/trace-cmd/plugins/plugin_kvm.c) prints kvm_mmu_get_page as
  "new sp gfn 1 4 q0 direct wux !pae nxe wp root 0 sync" and kvm_mmu_prepare_zap_page without its gfn.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tdptrace.errors import BadInput
from tdptrace.importers.kallsyms import Kallsyms
from tdptrace.importers.kprobe_events import KprobeEvent
from tdptrace.importers.textnum import hex_to_u64

_ENTRY_RE = r"^\((?P<ip>[0-9a-fA-F]{8,16})\)(?P<args>.*)$"
_RETURN_RE = r"^\((?P<func>[0-9a-fA-F]{8,16}) <- (?P<ret>[0-9a-fA-F]{8,16})\)(?P<args>.*)$"
UNRESOLVED = "unresolved kprobe "

# plugin_kvm.c kvm_mmu_print_role (+ "new|existing sp gfn %llx " in front for kvm_mmu_get_page).
_PLUGIN_SP_RE = (r"^(?:(?P<created>new|existing) sp gfn (?P<gfn>[0-9a-fA-F]+) )?(?P<level>\d+) q(?P<q>\d+)"
                 r"(?P<mid>.*?) root (?P<root>\d+) (?P<sync>unsync|sync)\s*$")
PAGE_TABLE_EVENTS = ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page")


def strip_body(events: pa.Table) -> pa.Table:
    """Both tools pad the event name with spaces: drop the body's leading blanks."""
    i = events.column_names.index("body")
    return events.set_column(i, "body", pc.utf8_ltrim_whitespace(events.column("body")))


def _replace_rows(events: pa.Table, name: str, mask: pa.Array, values: pa.Array) -> pa.Table:
    """Column `name` with the rows under `mask` replaced by `values` (one value per masked row, in order)."""
    i = events.column_names.index(name)
    col = events.column(name).combine_chunks()
    return events.set_column(i, name, pc.replace_with_mask(col, mask, values))


def translate_kvm_plugin(events: pa.Table) -> pa.Table:
    """kvm plugin wording of kvm_mmu_get_page / kvm_mmu_prepare_zap_page -> the kernel's own TP_printk wording.

    The plugin drops mmu_valid_gen (written as 0) and, for kvm_mmu_prepare_zap_page, the gfn (written as 0):
    counts and levels stay exact. A trace.dat given directly is reported without plugins, keeping both.
    """
    event = pc.replace_substring_regex(events.column("event").combine_chunks(), "^kvmmmu:", "")
    body = events.column("body").combine_chunks()
    is_pt = pc.and_(pc.is_in(event, pa.array(PAGE_TABLE_EVENTS)), pc.invert(pc.starts_with(body, "sp gen ")))
    is_pt = pc.and_(is_pt, pc.invert(pc.starts_with(body, "[")))
    if not pc.any(is_pt).as_py():
        return events
    m = pc.extract_regex(body.filter(is_pt), _PLUGIN_SP_RE)
    hit = m.is_valid()
    if not pc.any(hit).as_py():
        return events
    rows = pa.array(np.flatnonzero(is_pt.to_numpy(zero_copy_only=False))[hit.to_numpy(zero_copy_only=False)])
    m = m.filter(hit)
    f = {k: pc.fill_null(pc.struct_field(m, k), "") for k in ("created", "gfn", "level", "q", "mid", "root", "sync")}
    gfn = pc.if_else(pc.equal(f["gfn"], ""), "0", f["gfn"])
    created = pc.if_else(pc.equal(f["created"], ""), "", pc.binary_join_element_wise(" ", f["created"], ""))
    text = pc.binary_join_element_wise("sp gen 0 gfn ", gfn, " l", f["level"], " 8-byte q", f["q"], f["mid"],
                                       " root ", f["root"], " ", f["sync"], created, "")
    mask = np.zeros(len(body), dtype=bool)
    mask[rows.to_numpy()] = True
    return _replace_rows(events, "body", pa.array(mask), text)


def _event_map(events: pa.Array, probes: dict[str, KprobeEvent]) -> tuple[np.ndarray, pa.Array, pa.Array, np.ndarray]:
    """(known, function, offset hex, is_return) per row, looked up by event name (with or without group)."""
    keys = pa.array(list(probes), type=pa.string())
    bare = pc.replace_substring_regex(events, r"^[^:]*:", "")
    idx = pc.index_in(events, value_set=keys)
    idx = pc.coalesce(idx, pc.index_in(bare, value_set=keys))
    known = pc.is_valid(idx).to_numpy(zero_copy_only=False)
    vals = list(probes.values())
    funcs = pa.array([p.function for p in vals], type=pa.string())
    offs = pa.array([hex(p.offset) for p in vals], type=pa.string())
    rets = np.array([p.is_return for p in vals], dtype=bool)
    safe = pc.fill_null(idx, 0)
    is_ret = rets[safe.to_numpy(zero_copy_only=False)] if len(vals) else np.zeros(len(events), dtype=bool)
    return known, funcs.take(safe), offs.take(safe), is_ret


def name_kprobes(events: pa.Table, kallsyms: Kallsyms | None, probes: dict[str, KprobeEvent] | None) -> pa.Table:
    """Rewrite raw-address kprobe bodies into the tracefs form decode.py reads.

    Entry: '(sym+0xoff/0xsize [mod]) args'; return: '(caller+0xoff/0xsize [mod] <- sym) args' (caller '?' when
    only kprobe_events is known). A line neither map can name is kept, prefixed 'unresolved kprobe ', so it
    becomes a marker counted under its event name instead of a wrong span.
    """
    all_body = events.column("body").combine_chunks()
    paren = pc.starts_with(all_body, "(")
    if not pc.any(paren).as_py():
        return events
    body = all_body.filter(paren)
    ent = pc.extract_regex(body, _ENTRY_RE)
    ret = pc.extract_regex(body, _RETURN_RE)
    is_ent = ent.is_valid()
    is_ret = ret.is_valid()
    any_raw = pc.or_(is_ent, is_ret)
    if not pc.any(any_raw).as_py():
        return events
    if kallsyms is None and not probes:
        example = body.filter(any_raw)[0].as_py()
        raise BadInput(f"kprobe events print raw addresses ('{example[:50]}') and nothing names them",
                       "pass --kallsyms FILE (the traced host's /proc/kallsyms, read as root) "
                       "or --kprobe-events FILE (its tracefs kprobe_events)")
    n = len(body)
    null = pa.nulls(n, pa.string())
    ent_loc, ret_func, ret_caller = null, null, null
    args = pc.coalesce(pc.struct_field(ent, "args"), pc.struct_field(ret, "args"))
    if kallsyms is not None:
        ip = hex_to_u64(pc.fill_null(pc.struct_field(ent, "ip"), "0"), "kprobe address")
        ent_loc, _ = kallsyms.resolve(ip)
        func = hex_to_u64(pc.fill_null(pc.struct_field(ret, "func"), "0"), "kprobe address")
        _, ret_func = kallsyms.resolve(func)
        rip = hex_to_u64(pc.fill_null(pc.struct_field(ret, "ret"), "0"), "kprobe address")
        ret_caller, _ = kallsyms.resolve(rip)
    if probes:
        known, funcs, offs, returns = _event_map(events.column("event").combine_chunks().filter(paren), probes)
        by_event = pc.binary_join_element_wise(funcs, "+", offs, "/0x0", "")
        ent_loc = pc.coalesce(ent_loc, pc.if_else(pa.array(known & ~returns), by_event, null))
        ret_func = pc.coalesce(ret_func, pc.if_else(pa.array(known & returns), funcs, null))
    ret_caller = pc.coalesce(ret_caller, pa.scalar("?"))
    entry_text = pc.binary_join_element_wise("(", ent_loc, ")", args, "")
    return_text = pc.binary_join_element_wise("(", ret_caller, " <- ", ret_func, ")", args, "")
    named = pc.if_else(is_ent, entry_text, pc.if_else(is_ret, return_text, null))
    unresolved = pc.and_(any_raw, pc.is_null(named))
    out = pc.if_else(unresolved, pc.binary_join_element_wise(UNRESOLVED, body, ""), pc.coalesce(named, body))
    return _replace_rows(events, "body", paren, out)
