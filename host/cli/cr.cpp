// `crbench cr dump|restore|show`: the native engine used standalone, like `criu dump/restore`.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "cli/command.hpp"
#include "core/fsutil.hpp"
#include "core/json.hpp"
#include "engine/native/incremental.hpp"
#include "engine/native/native.hpp"
#include "engine/native/cow.hpp"
#include "engine/native/precopy.hpp"

namespace crb {
namespace {

struct CrOptions {
  pid_t tree = 0;
  std::string images;
  bool leaveRunning = false;
  bool noSync = false;
  bool detach = false;
  bool json = false;
  std::string freezeCgroup;
  std::vector<std::string> external;
  bool preCopy = false;
  bool cow = false;
  native::PreCopyOptions pc;
  std::string parent;   // dump --parent
  bool lazy = false;    // restore --lazy
  std::string flattenOut;
};

void printPhases(const std::map<std::string, double>& ph) {
  for (auto& [k, v] : ph) std::fprintf(stderr, "  %-8s %8.2f ms\n", k.c_str(), v);
}

std::function<int()> setupCr(CLI::App& app, GlobalOptions&) {
  auto o = std::make_shared<CrOptions>();
  app.require_subcommand(1);
  auto* dump = app.add_subcommand("dump", "checkpoint a process tree into an image directory");
  dump->add_option("--tree,-t", o->tree, "pid of the tree's root")->required();
  dump->add_option("--images,-D", o->images, "image directory (created if missing, must be empty)")->required();
  dump->add_flag("--leave-running,-R", o->leaveRunning, "let the tree continue after the dump (default: it is killed)");
  dump->add_flag("--no-sync", o->noSync, "do not fdatasync image files (faster on disks; tmpfs does not care)");
  dump->add_flag("--json", o->json, "print figures as JSON");
  dump->add_option("--freeze-cgroup", o->freezeCgroup,
                   "cgroup v1 freezer directory holding the tree: frozen while every thread is seized (thawed "
                   "before anything is changed, and by crbench's guardian if crbench dies)");
  dump->add_option("--external", o->external,
                   "accept a connection to outside the tree: unix:<inode> or unix:<name> (a path, or @name for "
                   "an abstract one) of the outside peer or of the tree's own socket; restore reconnects it by name")
      ->each([](const std::string& v) {
        if (v.rfind("unix:", 0) != 0 || v.size() == 5)
          throw CLI::ValidationError("--external", "'" + v + "': expected unix:<inode> or unix:<name>");
      });
  dump->add_flag("--pre-copy", o->preCopy,
                 "copy memory in rounds while the tree runs (dirty pages found with userfaultfd write-protect + "
                 "PAGEMAP_SCAN), then freeze briefly for the rest; the tree is left running");
  dump->add_flag("--cow", o->cow,
                 "copy-on-write: freeze, write-protect the memory, let the tree run again at once and copy the "
                 "pages afterwards (a write first has its old page copied); the tree is left running");
  dump->add_option("--target-downtime-ms", o->pc.targetDowntimeMs, "pre-copy: stop the rounds when the final copy "
                   "would take about half this")->check(CLI::Range(0.1, 1e6));
  dump->add_option("--max-rounds", o->pc.maxRounds, "pre-copy: at most this many rounds after the first")
      ->check(CLI::Range(0, 1000));
  dump->add_option("--max-seconds", o->pc.maxSeconds, "pre-copy: at most this long for all rounds")
      ->check(CLI::Range(0.0, 86400.0));
  dump->add_option("--dirty-tracking", o->pc.dirtyTracking,
                   "pre-copy: auto (default; also $CRBENCH_DIRTY_TRACKING), uffd-wp (userfaultfd write-protect + "
                   "PAGEMAP_SCAN, Linux >= 6.7) or soft-dirty (CONFIG_MEM_SOFT_DIRTY); a method this kernel lacks "
                   "is an error")
      ->check(CLI::IsMember({"auto", "uffd-wp", "soft-dirty"}));
  dump->add_option("--parent", o->parent,
                   "incremental dump: store only the pages that differ from this image's (a full or incremental "
                   "image; the new image refers to it by relative path and uuid, so keep the chain together)");
  auto* restore = app.add_subcommand("restore", "restore a process tree from an image directory");
  restore->add_flag("--lazy", o->lazy,
                    "lazy restore: the tree runs before its private anonymous memory is in; crbench serves missing "
                    "pages on demand (userfaultfd) and pushes the rest, returning when all are in");
  restore->add_option("--images,-D", o->images, "image directory")->required();
  restore->add_flag("--detach,-d", o->detach,
                    "return once restored (the tree is reparented when crbench exits); default: wait for the "
                    "restored root and exit with its status");
  restore->add_flag("--json", o->json, "print figures as JSON");
  auto* show = app.add_subcommand("show", "describe an image (verifies every checksum)");
  show->add_option("images", o->images, "image directory")->required();
  show->add_flag("--json", o->json, "machine-readable output");
  auto* flatten = app.add_subcommand("flatten", "write a self-contained copy of an incremental image's chain");
  flatten->add_option("images", o->images, "image directory (the newest of a chain)")->required();
  flatten->add_option("out", o->flattenOut, "new image directory (created if missing, must be empty)")->required();
  flatten->add_flag("--no-sync", o->noSync, "do not fdatasync image files");
  flatten->add_flag("--json", o->json, "print figures as JSON");

  return [o, dump, restore, show, flatten]() -> int {
    if (flatten->parsed()) {
      auto r = native::flattenImage(o->images, o->flattenOut, !o->noSync);
      if (!r.ok()) return reportError(r.error());
      if (o->json)
        std::printf("%s\n", r->dump(2).c_str());
      else
        std::printf("flattened a chain of %d images into %s: %llu pages\n", (*r)["levels"].get<int>(),
                    o->flattenOut.c_str(), (*r)["pages"].get<unsigned long long>());
      return 0;
    }
    if (dump->parsed()) {
      auto mk = makeDirs(o->images, 0700);
      if (!mk.ok()) return reportError(mk.error());
      native::DumpOptions opts;
      opts.leaveRunning = o->leaveRunning;
      opts.sync = !o->noSync;
      opts.freezeCgroup = o->freezeCgroup;
      opts.external = o->external;
      opts.parent = o->parent;
      std::unique_ptr<native::PreCopySession> session;
      std::unique_ptr<native::CowSession> cow;
      if (o->preCopy && o->cow) return reportError(makeError("--pre-copy and --cow exclude each other"));
      if (!o->parent.empty()) {
        // Checked before any pre-copy round or protection: a bad parent touches nothing.
        auto idx = native::loadParentIndex(o->parent, o->images);
        if (!idx.ok()) return reportError(idx.error().context("--parent " + o->parent));
        opts.parentIndex = *idx;
      }
      if (o->cow) {
        cow = std::make_unique<native::CowSession>(o->images);
        if (auto st = cow->arm({o->tree}); !st.ok())
          return reportError(st.error().context("copy-on-write: arming write-protection (the tree was left running)"));
        cow->lookBeforeFreeze({o->tree});
        opts.capture = cow.get();
        opts.leaveRunning = true;
        o->leaveRunning = true;
      }
      if (o->preCopy) {
        auto s = native::PreCopySession::start(o->tree, o->images, o->pc);
        if (!s.ok()) return reportError(s.error());
        session = std::move(*s);
        if (auto st = session->iterate(); !st.ok()) return reportError(st.error());
        opts.capture = session.get();
        opts.leaveRunning = true;
        o->leaveRunning = true;
      }
      auto r = native::dumpTree(o->tree, o->images, opts);
      if (!r.ok()) return reportError(r.error());
      if (o->json) {
        std::printf("%s\n", r->toJson().dump(2).c_str());
      } else {
        std::printf("dumped %llu processes, %llu threads, %llu pages (%.1f MiB) into %s; tree %s; frozen %.2f ms\n",
                    (unsigned long long)r->processes, (unsigned long long)r->threads,
                    (unsigned long long)r->pagesWritten, double(r->bytesWritten) / (1 << 20), o->images.c_str(),
                    o->leaveRunning ? "left running" : "killed", r->frozenMs);
        printPhases(r->phasesMs);
      }
      return 0;
    }
    if (restore->parsed()) {
      native::RestoreOptions opts;
      opts.detach = o->detach;
      opts.lazy = o->lazy;
      if (o->lazy)
        opts.onResumed = [] { std::fprintf(stderr, "restored tree running; serving the rest of its memory\n"); };
      auto r = native::restoreTree(o->images, opts);
      if (!r.ok()) return reportError(r.error());
      if (o->json) {
        std::printf("%s\n", Json{{"root_pid", r->rootPid}, {"processes", r->processes}, {"threads", r->threads},
                                 {"pages", r->pagesRestored}, {"phases_ms", r->phasesMs}, {"lazy", r->lazy}}
                                .dump(2)
                                .c_str());
      } else {
        std::fprintf(stderr, "restored %llu processes, %llu threads, %llu pages; root pid %d\n",
                     (unsigned long long)r->processes, (unsigned long long)r->threads,
                     (unsigned long long)r->pagesRestored, r->rootPid);
        printPhases(r->phasesMs);
        if (o->lazy) std::fprintf(stderr, "lazy: %s\n", r->lazy.dump().c_str());
      }
      std::fflush(stdout);
      if (o->detach) return 0;
      int st = 0;
      if (::waitpid(r->rootPid, &st, 0) < 0) return 0;
      if (WIFEXITED(st)) {
        std::fprintf(stderr, "restored root %d exited with status %d\n", r->rootPid, WEXITSTATUS(st));
        return WEXITSTATUS(st);
      }
      std::fprintf(stderr, "restored root %d killed by signal %d\n", r->rootPid, WTERMSIG(st));
      return 128 + WTERMSIG(st);
    }
    auto r = native::describeImage(o->images);
    if (!r.ok()) return reportError(r.error());
    if (o->json) {
      std::printf("%s\n", r->dump(2).c_str());
      return 0;
    }
    auto& j = *r;
    std::printf("native image %s (format %d), kernel %s, root pid %d\n", o->images.c_str(),
                j.value("format_version", 0), j.value("kernel", "").c_str(), j.value("root_pid", 0));
    for (auto& p : j["processes"]) {
      std::printf("  pid %d (%s) ppid %d pgid %d sid %d%s: %zu thread(s), %zu mappings, %llu pages, %zu handlers, "
                  "%zu pending signals, cwd %s\n",
                  p["pid"].get<int>(), p["comm"].get<std::string>().c_str(), p["ppid"].get<int>(),
                  p["pgid"].get<int>(), p["sid"].get<int>(), p["zombie"].get<bool>() ? " zombie" : "",
                  p["threads"].get<size_t>(), p["vmas"].get<size_t>(), p["pages"].get<unsigned long long>(),
                  p["handlers"].get<size_t>(), p["pending_signals"].get<size_t>(), p["cwd"].get<std::string>().c_str());
      for (auto& f : p["fds"])
        std::printf("    fd %d: %s %s pos %llu\n", f["fd"].get<int>(), f["kind"].get<std::string>().c_str(),
                    f["path"].get<std::string>().c_str(), f["pos"].get<unsigned long long>());
    }
    for (auto& p : j["pipes"])
      std::printf("  pipe:[%llu] %llu bytes in flight\n", p["ino"].get<unsigned long long>(),
                  p["blobLen"].get<unsigned long long>());
    for (auto& s : j["shared_memory"])
      std::printf("  shared memory %s: %llu bytes\n", s["name"].get<std::string>().c_str(),
                  s["size"].get<unsigned long long>());
    if (j.contains("chain")) {
      std::printf("  incremental: chain of %zu images (newest first)\n", j["chain"].size());
      for (auto& l : j["chain"])
        std::printf("    %s uuid %s%s\n", l["path"].get<std::string>().c_str(), l["uuid"].get<std::string>().c_str(),
                    l["incremental"].get<bool>()
                        ? (" (incremental, " + l.value("capture", "") + ", " + l.value("method", "") + ")").c_str()
                        : " (full)");
      for (auto& p : j["processes"])
        if (p.contains("stored_pages"))
          std::printf("    pid %d: %llu of %llu pages stored in this image\n", p["pid"].get<int>(),
                      p["stored_pages"].get<unsigned long long>(), p["pages"].get<unsigned long long>());
    }
    std::printf("  all checksums verified\n");
    return 0;
  };
}
}  // namespace
CRB_REGISTER_COMMAND(cr, "cr", "native checkpoint/restore of a process tree: dump, restore, show, flatten", setupCr);
}  // namespace crb
