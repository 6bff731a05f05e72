#pragma once
// Process-wide behaviour of the CLI around the commands: write failures are errors, not signals.

namespace rc::cli {

// Ignores SIGPIPE and SIGXFSZ: a write to a closed pipe or beyond `ulimit -f` then fails with
// EPIPE / EFBIG, which the writers report like any other write failure (a message naming the file,
// temporaries removed), instead of the process dying silently.
void ignore_write_signals();

// Flushes standard output. A reader that stopped reading (`check ... | head -c 10`) keeps the
// command's exit code, the verdict; any other failure (disk full, file too large) is reported and
// turns the exit code into 2 (an output that was not written is not a success).
int finish_standard_output(int exit_code);

}  // namespace rc::cli
