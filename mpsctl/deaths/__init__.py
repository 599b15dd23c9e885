"""Memory deaths: how a service ran out of memory, found in log text, counted once, explained.

Read-only forensics over log files and the operating system's own records. The parsers
are pure (text in, events out); the scanner reads files; nothing here signals a process.

- one parser per source: ``allocator`` (PyTorch's caching-allocator messages),
  ``torch_errors`` (the CPU allocator, CUDA runtime errors, the MPS array limit),
  ``kernel_oom`` (the kernel's OOM-killer report), ``systemd_oomd`` (systemd-oomd),
  ``jetsam`` (macOS), ``worker_kills`` (a gunicorn worker killed with SIGKILL); ``parsers``
  runs them all over one excerpt; ``line_prefix`` reads the time prefixes they share;
- ``scanner`` finds them in files of any size: ``first_pass`` (byte needles in Python) or
  ``grep_pass`` (the system's ``rg``/``grep -F``) first, then the parsers on the windows
  around each hit;
- ``counting``: the one rule that counts a failure once however many files it was seen in;
- ``cursor``: the probe's per-file cursor, so each new byte is scanned once;
- ``advice`` (every kind) and ``allocator_advice`` (allocator messages, with the plan);
- ``system_logs``: the kernel log, journald, syslog files and jetsam reports, where readable;
- ``how_it_died``: the one answer to "how did the service die" from all of the above.
"""
