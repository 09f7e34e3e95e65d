#pragma once
// Helpers shared by the scenario workload programs. They run inside the sandbox (container or VM)
// with only libc around them, so they stay small and depend on nothing but the C++ runtime.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>
#include <thread>
#include <utility>

namespace crbw {

// Status files are replaced with rename() so a check never reads a half-written one.
inline bool writeStatus(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) return false;
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

inline std::string readText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "key=value" lines; returns "" when absent.
inline std::string field(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
  }
  return {};
}

inline void writePid(const std::string& path) {
  writeStatus(path, std::to_string(getpid()) + "\n");
}

inline pid_t readPid(const std::string& path) {
  std::string t = readText(path);
  return t.empty() ? 0 : static_cast<pid_t>(std::atol(t.c_str()));
}

// --name value options; returns fallback when absent.
inline std::string opt(int argc, char** argv, const std::string& name,
                       const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (name == argv[i]) return argv[i + 1];
  return fallback;
}

inline double nowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline void sleepSeconds(double s) {
  if (s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

// The "progress" verb of a workload: print one field of its status file (the value the
// scenario's progress check compares before and after); fails when there is no status yet.
inline int printStatusField(int argc, char** argv, const std::string& defaultDir,
                            const std::string& key) {
  std::string st = readText(opt(argc, argv, "--state", defaultDir) + "/status");
  std::printf("%s\n", field(st, key).c_str());
  return st.empty() ? 1 : 0;
}

using Verb = std::pair<const char*, int (*)(int, char**)>;

// argv[1] picks the verb; anything else prints the usage and exits 2.
inline int dispatch(int argc, char** argv, std::initializer_list<Verb> verbs, const char* usage) {
  std::string verb = argc > 1 ? argv[1] : "";
  for (auto& [name, fn] : verbs)
    if (verb == name) return fn(argc, argv);
  std::fprintf(stderr, "%s", usage);
  return 2;
}

[[noreturn]] inline void die(const std::string& msg) {
  std::fprintf(stderr, "%s\n", msg.c_str());
  std::exit(2);
}

}  // namespace crbw
