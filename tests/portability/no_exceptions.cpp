// The -fno-exceptions mode (detail/checks.hpp): built with -fno-exceptions, every error the policy
// would throw reaches the installed handler with the message an exception would carry, and without
// a handler the same message goes to stderr and the process aborts. Each case runs in a forked
// child (a failed call has no result to return to), whose exit status and output the parent checks.
// Usage: softmaxlab_no_exceptions_test handler | default
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include <sys/wait.h>

#include <softmaxlab/softmaxlab.hpp>

#if SOFTMAXLAB_HAS_EXCEPTIONS
#error "this test must be built with -fno-exceptions"
#endif

namespace sml = softmaxlab;

namespace {

int g_pipe = -1;  // the child's end of the pipe to the parent

// Writes kind and message to the parent and ends the child: a handler must not return.
void recording_handler(sml::ErrorKind kind, const char* message) {
  const std::string line =
      std::string(kind == sml::ErrorKind::invalid_argument ? "invalid_argument: " : "other: ")
      + message;
  if (write(g_pipe, line.data(), line.size()) < 0)
    std::_Exit(3);
  std::_Exit(42);
}

struct Outcome {
  int status = 0;
  std::string output;
};

// Runs `trigger` in a child whose stderr (and the handler's pipe) goes to the parent.
Outcome run_child(bool install_handler, const std::function<void()>& trigger) {
  int fds[2];
  if (pipe(fds) != 0) {
    std::perror("pipe");
    std::exit(2);
  }
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    g_pipe = fds[1];
    dup2(fds[1], STDERR_FILENO);
    if (install_handler)
      sml::set_error_handler(recording_handler);
    trigger();
    std::_Exit(0);  // the error did not stop the call: a failure
  }
  close(fds[1]);
  Outcome out;
  char buffer[512];
  ssize_t n;
  while ((n = read(fds[0], buffer, sizeof buffer)) > 0)
    out.output.append(buffer, static_cast<std::size_t>(n));
  close(fds[0]);
  waitpid(pid, &out.status, 0);
  return out;
}

struct Case {
  const char* name;
  const char* expected;  // the message an exception would carry (exactly)
  std::function<void()> trigger;
};

const Case kCases[] = {
    {"bad temperature",
     "softmaxlab::Softmax: temperature must be in [2^-100, 2^100] (finite, > 0), but got -1",
     [] {
       sml::Softmax f(-1.0);
     }},
    {"wrong output size",
     "softmaxlab::Softmax: output must have the input's length 3, but got 2 x 1",
     [] {
       Eigen::VectorXf x = Eigen::VectorXf::Zero(3), y(2);
       sml::Softmax().apply(x, y);
     }},
    {"bad tau",
     "softmaxlab::GumbelSoftmax: tau must be in [2^-100, 2^100] (finite, > 0), but got 0",
     [] {
       sml::GumbelSoftmax g(0.0);
     }},
    {"odd power", "softmaxlab::PowerSoftmax: p must be an even integer in [2, 64], but got 3",
     [] {
       sml::PowerSoftmax p(3);
     }},
};

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "handler";
  const bool handler = mode == "handler";
  if (!handler && mode != "default") {
    std::fprintf(stderr, "usage: %s handler|default\n", argv[0]);
    return 2;
  }
  int failures = 0;
  for (const Case& c : kCases) {
    const Outcome out = run_child(handler, c.trigger);
    bool ok;
    std::string expected;
    if (handler) {
      ok = WIFEXITED(out.status) && WEXITSTATUS(out.status) == 42;
      expected = std::string("invalid_argument: ") + (c.expected ? c.expected : "softmaxlab::");
    } else {
      ok = WIFSIGNALED(out.status) && WTERMSIG(out.status) == SIGABRT;
      expected = std::string(c.expected ? c.expected : "softmaxlab::") + (c.expected ? "\n" : "");
    }
    // The default handler's message must come first and whole; in default mode an emulator may
    // add its own line after it (qemu-user prints "qemu: uncaught target signal 6" on abort).
    const bool exact = c.expected && handler;
    ok =
        ok
        && (exact ? out.output == expected : out.output.compare(0, expected.size(), expected) == 0);
    std::string shown = out.output;
    if (!shown.empty() && shown.back() == '\n')
      shown.pop_back();
    std::printf("%s %s: %s\n", ok ? "ok  " : "FAIL", c.name, shown.c_str());
    if (!ok) {
      std::printf("     expected %s\"%s\" (status %d)\n", handler ? "exit 42 and " : "SIGABRT and ",
                  expected.c_str(), out.status);
      ++failures;
    }
  }
  std::printf("%d of %zu cases failed (%s mode)\n", failures, sizeof kCases / sizeof kCases[0],
              mode.c_str());
  return failures == 0 ? 0 : 1;
}
