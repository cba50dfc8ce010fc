#pragma once
/// Ctrl-C and SIGTERM: the handlers only record the signal; long loops poll interrupted() at safe
/// points and stop there (writing a checkpoint where the command has one), then main exits 128 + signal.
#include <string>

#include "common/errors.h"

namespace lopt {

/// Installs the SIGINT / SIGTERM handlers (idempotent).
void install_interrupt_handlers();
/// The signal received since the handlers were installed (SIGINT / SIGTERM), or 0.
int interrupted();
/// Forgets a received signal (tests).
void clear_interrupt();

/// A run stopped because of a signal; what() says what was kept and how to continue.
class Interrupted : public Error {
 public:
  Interrupted(int signal, const std::string& msg) : Error(msg), signal_(signal) {}
  int signal() const { return signal_; }

 private:
  int signal_;
};

/// "SIGINT (Ctrl-C)", "SIGTERM", or "signal N".
std::string signal_name(int signal);

/// Throws Interrupted (message: `what` + " interrupted by SIG…; " + `next`) when a signal arrived.
void throw_if_interrupted(const std::string& what, const std::string& next);

}  // namespace lopt
