#!/bin/sh
# A trainer that does almost nothing but leave proof it ran: one file per execution,
# named after the run (its directory's name) and this process, in $TUNIX_BENCH_RECORD_DIR.
: > "$TUNIX_BENCH_RECORD_DIR/$(basename "$1").$$"
