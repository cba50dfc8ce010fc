#include "common/signals.h"

#include <atomic>
#include <csignal>

namespace lopt {

namespace {
std::atomic<int> g_signal{0};
extern "C" void record_signal(int sig) { g_signal.store(sig); }
}  // namespace

void install_interrupt_handlers() {
  struct sigaction sa {};
  sa.sa_handler = record_signal;
  sa.sa_flags = SA_RESTART;  // blocking calls resume; loops poll interrupted() at their safe points
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

int interrupted() { return g_signal.load(); }
void clear_interrupt() { g_signal.store(0); }

std::string signal_name(int signal) {
  if (signal == SIGINT) return "SIGINT (Ctrl-C)";
  if (signal == SIGTERM) return "SIGTERM";
  return "signal " + std::to_string(signal);
}

void throw_if_interrupted(const std::string& what, const std::string& next) {
  const int sig = interrupted();
  if (sig == 0) return;
  throw Interrupted(sig, what + " interrupted by " + signal_name(sig) + "; " + next);
}

}  // namespace lopt
