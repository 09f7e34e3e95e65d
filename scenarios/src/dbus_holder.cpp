// crb-dbus-holder: owns a well-known name on the session bus and keeps serving it, so a
// "still owned after restore" check has something real to look for: the bus connection (a unix
// socket to dbus-daemon) must survive the checkpoint for the daemon to keep the name assigned.
//   crb-dbus-holder [NAME]     (bus address from DBUS_SESSION_BUS_ADDRESS)
#include <dbus/dbus.h>

#include "common.hpp"

int main(int argc, char** argv) {
  const char* name = argc > 1 ? argv[1] : "org.crbench.Holder";
  DBusError err;
  dbus_error_init(&err);
  DBusConnection* conn = nullptr;
  // The daemon is started next to us; retry for a while instead of racing it.
  for (int i = 0; i < 100 && !conn; ++i) {
    conn = dbus_bus_get(DBUS_BUS_SESSION, &err);
    if (!conn) {
      dbus_error_free(&err);
      crbw::sleepSeconds(0.1);
    }
  }
  if (!conn) crbw::die("crb-dbus-holder: cannot reach the session bus (is DBUS_SESSION_BUS_ADDRESS set?)");
  int r = dbus_bus_request_name(conn, name, DBUS_NAME_FLAG_DO_NOT_QUEUE, &err);
  if (r != DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER)
    crbw::die(std::string("crb-dbus-holder: could not own ") + name + ": " + (err.message ? err.message : "taken"));
  std::printf("owning %s as %s\n", name, dbus_bus_get_unique_name(conn));
  std::fflush(stdout);
  while (dbus_connection_read_write_dispatch(conn, -1)) {
  }
  std::fprintf(stderr, "crb-dbus-holder: bus connection closed\n");
  return 1;
}
