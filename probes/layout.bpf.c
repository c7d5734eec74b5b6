/* layout.bpf.c - the records of tdptrace.h as map values, so tests can read BCC's view of their layout
 * (sizes and offsets) and compare it with tdptrace/live/records.py. Never attached to anything. */
#include "tdptrace.h"

BPF_ARRAY(layout_event, struct tdp_event, 1);
BPF_ARRAY(layout_span, struct tdp_span, 1);
BPF_ARRAY(layout_func_args, struct tdp_func_args, 1);
