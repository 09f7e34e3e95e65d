#pragma once
// Subcommands are files: host/cli/<verb>.cpp defines a Command and registers it with
// CRB_REGISTER_COMMAND. main.cpp builds the CLI11 app from the registry.
#include <CLI/CLI.hpp>

#include <functional>
#include <map>
#include <string>

namespace crb {

struct GlobalOptions {
  bool verbose = false;
  bool json = false;  // machine-readable output where the command supports it
};

struct Command {
  std::string name;
  std::string description;
  // Add options to `app`; return the function that runs the command and gives its exit code.
  std::function<std::function<int()>(CLI::App& app, GlobalOptions& global)> setup;
};

class CommandRegistry {
 public:
  static CommandRegistry& instance();
  void add(Command c) { commands_[c.name] = std::move(c); }
  const std::map<std::string, Command>& all() const { return commands_; }

 private:
  std::map<std::string, Command> commands_;
};

struct CommandRegistrar {
  explicit CommandRegistrar(Command c) { CommandRegistry::instance().add(std::move(c)); }
};

// Print an error the way every command does (one line, with the hint) and return its exit code.
int reportError(const struct Error& e);

}  // namespace crb

#define CRB_REGISTER_COMMAND(ident, ...) static ::crb::CommandRegistrar crb_cmd_##ident(::crb::Command{__VA_ARGS__})
