#!/usr/bin/env python3
# Work done as a retried call: the first attempt of each note declines with
# pmnc.protocol_retry.exit(), the next one writes it down.

__all__ = [ "note" ]

import os; from os import path as os_path

def note(marker: str):
    journal = os_path.join(__cage_dir__, "jobs.journal")
    seen = 0
    if os_path.isfile(journal):
        with open(journal) as f:
            seen = sum(1 for line in f if line.split()[0] == marker)
    with open(journal, "a") as f:
        f.write("{0:s} {1:s}\n".format(marker, "done" if seen else "declined"))
    if not seen:
        pmnc.protocol_retry.exit()

# EOF
