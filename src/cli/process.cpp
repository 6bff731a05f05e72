#include "process.h"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"

namespace rc::cli {

void ignore_write_signals() {
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGXFSZ, SIG_IGN);
}

int finish_standard_output(int exit_code) {
  std::cout.flush();
  errno = 0;
  const bool flushed = std::fflush(stdout) == 0;
  const int error = errno;
  if (flushed && !std::ferror(stdout) && !std::cout.fail()) return exit_code;
  // Writes to a pipe fail only when its reader is gone: it took what it wanted.
  struct stat info {};
  const bool pipe = ::fstat(STDOUT_FILENO, &info) == 0 && (S_ISFIFO(info.st_mode) || S_ISSOCK(info.st_mode));
  if (pipe || error == EPIPE) return exit_code;
  std::cerr << "error: cannot write to standard output: " << std::strerror(error != 0 ? error : EIO) << "\n";
  return exit_code == kOk || exit_code == kCheckFailed ? kInputError : exit_code;
}

}  // namespace rc::cli
