#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

#include "engine/engine.hpp"
#include "engine/libvirt/libvirt_conn.hpp"
#include "engine/libvirt/libvirt_sandbox.hpp"

namespace crb::libvirt {
namespace {

// Sets environment variables for one test and puts the old values back.
class ScopedEnv {
 public:
  void set(const char* name, const std::string& value) {
    const char* old = ::getenv(name);
    saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) ::setenv(it->first.c_str(), it->second->c_str(), 1);
      else ::unsetenv(it->first.c_str());
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

DomainSpec sampleSpec() {
  DomainSpec s;
  s.name = "crbench-t1";
  s.kernel = "/k/vmlinuz";
  s.initrd = "/k/initrd & more";
  s.cmdline = "console=ttyS0 quiet";
  s.consoleLog = "/run/crbench/t1/console.log";
  s.hostUdpPort = 41000;
  s.hostTcpPort = 41001;
  return s;
}

TEST(LibvirtDomainXml, TcgUsesQemuTypeAndForwardsAgentPorts) {
  std::string xml = domainXml(sampleSpec());
  EXPECT_NE(xml.find("<domain type='qemu'"), std::string::npos);
  EXPECT_EQ(xml.find("host-passthrough"), std::string::npos);
  EXPECT_NE(xml.find("hostfwd=udp:127.0.0.1:41000-:7700"), std::string::npos);
  EXPECT_NE(xml.find("hostfwd=tcp:127.0.0.1:41001-:7701"), std::string::npos);
  EXPECT_NE(xml.find("<initrd>/k/initrd &amp; more</initrd>"), std::string::npos);
  EXPECT_NE(xml.find("append='on'"), std::string::npos);
}

TEST(LibvirtDomainXml, KvmUsesKvmTypeAndHostCpu) {
  DomainSpec s = sampleSpec();
  s.accel = "kvm";
  std::string xml = domainXml(s);
  EXPECT_NE(xml.find("<domain type='kvm'"), std::string::npos);
  EXPECT_NE(xml.find("host-passthrough"), std::string::npos);
}

TEST(LibvirtEngine, UnavailableWhenNoDaemonAndLibvirtdMissing) {
  auto dir = std::filesystem::temp_directory_path() / ("crb-lv-unavail-" + std::to_string(::getpid()));
  ScopedEnv env;
  env.set("CRBENCH_LIBVIRT_URI", "qemu:///system?socket=" + (dir / "nowhere.sock").string());
  env.set("CRBENCH_LIBVIRTD", "/nonexistent/libvirtd");
  env.set("CRBENCH_RUNTIME_DIR", dir.string());
  auto engine = EngineRegistry::instance().create("libvirt");
  ASSERT_TRUE(engine);
  Capabilities c = engine->capabilities();
  EXPECT_FALSE(c.available());
  EXPECT_NE(c.unavailable.find("/nonexistent/libvirtd"), std::string::npos) << c.unavailable;
  EXPECT_NE(c.unavailable.find("nowhere.sock"), std::string::npos) << c.unavailable;
  EXPECT_TRUE(c.supportsRuntime(RuntimeKind::Vm));
  EXPECT_EQ(c.runtimeFlavor, "vm-libvirt");
  std::error_code ec;
  EXPECT_FALSE(std::filesystem::exists(dir / "libvirtd" / "libvirt-sock"));
  std::filesystem::remove_all(dir, ec);
}

class NotLibvirt : public Sandbox {
 public:
  RuntimeKind kind() const override { return RuntimeKind::Container; }
  const std::string& id() const override { return id_; }
  Result<Fd> openProbeSocket() override { return makeError("n/a"); }
  Result<Fd> openControlSocket() override { return makeError("n/a"); }
  Json describe() const override { return Json::object(); }
  Status stop() override { return success(); }
  std::string id_ = "c1";
};

TEST(LibvirtEngine, RefusesOtherRuntimesWithAHint) {
  auto engine = EngineRegistry::instance().create("libvirt");
  ASSERT_TRUE(engine);
  NotLibvirt sb;
  CheckpointContext ctx;
  ctx.mode = "stop-and-copy";
  auto r = engine->checkpoint(sb, ctx);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("vm-libvirt"), std::string::npos);
  EXPECT_NE(r.error().hint.find("--engine libvirt"), std::string::npos);
}

TEST(LibvirtErrors, LastErrorCarriesLibvirtsMessage) {
  initLibvirt();
  virConnectPtr c = virConnectOpen("qemu:///system?socket=/nonexistent/crbench.sock");
  ASSERT_EQ(c, nullptr);
  Error e = lastError("connect");
  EXPECT_EQ(e.message.rfind("connect: ", 0), 0u) << e.message;
  EXPECT_NE(e.message.find("/nonexistent/crbench.sock"), std::string::npos) << e.message;
}

}  // namespace
}  // namespace crb::libvirt
