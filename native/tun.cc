// qnat's TUN addon. It only makes syscalls into buffers that the JavaScript side owns
// (src/core/batch.ts's PacketBatch) and reports failures as errors whose `code` is the errno
// name; which devices to open, where, and what to do with the packets is decided in
// TypeScript (src/io/tun.ts). Its interface is typed in src/io/tun-native.d.ts.
//
// TUN semantics follow the Linux driver drivers/net/tun.c and Documentation/networking/tuntap.rst:
// one read() returns one packet, one write() injects one packet. With IFF_VNET_HDR every packet
// is preceded by a struct virtio_net_hdr (include/uapi/linux/virtio_net.h), which is how
// wireguard-go's tun/tun_linux.go receives offloaded super-packets; here the flag is only plumbed
// through (open flags and TUNSETOFFLOAD), the slot then holds header + packet.
//
// A TAP device (IFF_TAP) is the same driver carrying Ethernet frames: one read() is one frame.
// Slots may leave a gap between the virtio_net_hdr and what the device carries (a TUN leg of a
// router that also has TAP legs keeps 14 bytes free for an Ethernet header, src/core/batch.ts):
// then each packet is read and written with readv()/writev() over two pieces of its slot.

#include <napi.h>
#include <uv.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

namespace {

// sizeof(struct virtio_net_hdr) from include/uapi/linux/virtio_net.h (not includable from C++:
// a field there is named `class`); wireguard-go's tun/offload_linux.go calls it virtioNetHdrLen.
constexpr int kVirtioNetHdrLen = 10;

// UDP segmentation offload (Linux 6.2, include/uapi/linux/if_tun.h); older userspace headers
// lack them. TUNSETOFFLOAD fails with EINVAL on kernels that do not know them.
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif

// ---------------------------------------------------------------------------------------------
// Errors: `code` is the errno name (as Node's own fs/net errors), `errno` the negative errno,
// `syscall` what failed; the message reads "TUNSETIFF qr-694450d6-f6: Operation not permitted".

const char* ErrnoName(int err) {
  const char* name = uv_err_name(-err);  // libuv's UV_E* are -E* on Linux
  if (std::strncmp(name, "Unknown", 7) != 0) return name;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  const char* glibc_name = strerrorname_np(err);
  if (glibc_name != nullptr) return glibc_name;
#endif
  return "EUNKNOWN";
}

Napi::Error MakeErrnoError(Napi::Env env, int err, const char* syscall, const std::string& subject) {
  std::string message = std::string(syscall);
  if (!subject.empty()) message += " " + subject;
  message += ": ";
  message += std::strerror(err);
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, ErrnoName(err)));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  return error;
}

void ThrowErrno(Napi::Env env, int err, const char* syscall, const std::string& subject) {
  MakeErrnoError(env, err, syscall, subject).ThrowAsJavaScriptException();
}

void ThrowCoded(Napi::Env env, const char* code, const std::string& message, bool type_error = false) {
  Napi::Error error = type_error ? Napi::TypeError::New(env, message) : Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.ThrowAsJavaScriptException();
}

// ---------------------------------------------------------------------------------------------
// Argument readers: each returns false after throwing a TypeError/RangeError.

bool ReadInt(const Napi::CallbackInfo& info, size_t index, const char* what, int64_t min, int64_t max,
             int64_t* out) {
  Napi::Env env = info.Env();
  if (!info[index].IsNumber()) {
    ThrowCoded(env, "ERR_INVALID_ARG_TYPE", std::string(what) + " must be a number", true);
    return false;
  }
  double value = info[index].As<Napi::Number>().DoubleValue();
  if (!(value >= static_cast<double>(min) && value <= static_cast<double>(max)) ||
      value != static_cast<double>(static_cast<int64_t>(value))) {
    ThrowCoded(env, "ERR_OUT_OF_RANGE",
               std::string(what) + " must be an integer in " + std::to_string(min) + ".." + std::to_string(max));
    return false;
  }
  *out = static_cast<int64_t>(value);
  return true;
}

bool ReadFd(const Napi::CallbackInfo& info, size_t index, int* fd) {
  int64_t value = 0;
  if (!ReadInt(info, index, "fd", 0, INT32_MAX, &value)) return false;
  *fd = static_cast<int>(value);
  return true;
}

// An interface name fits in IFNAMSIZ including its NUL (include/uapi/linux/if.h).
bool ReadInterfaceName(const Napi::CallbackInfo& info, size_t index, std::string* name) {
  Napi::Env env = info.Env();
  if (!info[index].IsString()) {
    ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "interface name must be a string", true);
    return false;
  }
  *name = info[index].As<Napi::String>().Utf8Value();
  if (name->empty() || name->size() >= IFNAMSIZ || name->find('/') != std::string::npos ||
      name->find('\0') != std::string::npos) {
    ThrowCoded(env, name->size() >= IFNAMSIZ ? "ENAMETOOLONG" : "EINVAL",
               "interface name \"" + *name + "\" is invalid: it must be 1.." + std::to_string(IFNAMSIZ - 1) +
                   " bytes without '/' (IFNAMSIZ)");
    return false;
  }
  return true;
}

// A namespace argument is a path (e.g. /run/netns/qnat-tenant) or null/undefined for "stay here".
bool ReadNetnsPath(const Napi::CallbackInfo& info, size_t index, std::string* path) {
  if (info[index].IsNull() || info[index].IsUndefined()) {
    path->clear();
    return true;
  }
  if (!info[index].IsString()) {
    ThrowCoded(info.Env(), "ERR_INVALID_ARG_TYPE", "netns path must be a string or null", true);
    return false;
  }
  *path = info[index].As<Napi::String>().Utf8Value();
  if (path->empty()) {
    ThrowCoded(info.Env(), "EINVAL", "netns path must not be empty");
    return false;
  }
  return true;
}

// A batch is `data` cut into `slot_size` slots with one length per slot (src/core/batch.ts).
struct BatchView {
  uint8_t* data;
  uint32_t* lengths;
  size_t slot_size;
  size_t count;
  size_t headroom;
  // The device's bytes are the slot's first `vnet` bytes (the virtio_net_hdr) and, from
  // `headroom - link`, the link header (`link` bytes: 14 for TAP) and the packet. When
  // vnet + link == headroom they are one piece from the slot's start.
  size_t vnet;
  size_t link;
  bool contiguous() const { return vnet + link == headroom; }
};

// The optional `headroom` argument at `index` (bytes before each packet in its slot), below slotSize.
bool ReadHeadroom(const Napi::CallbackInfo& info, size_t index, size_t slot_size, size_t* headroom) {
  *headroom = 0;
  if (info.Length() <= index || info[index].IsUndefined()) return true;
  int64_t value = 0;
  if (!ReadInt(info, index, "headroom", 0, static_cast<int64_t>(slot_size) - 1, &value)) return false;
  *headroom = static_cast<size_t>(value);
  return true;
}

// The optional `vnetLength` and `linkLength` arguments at `index` and `index + 1` (default: the
// whole headroom is the virtio_net_hdr, no link header); vnetLength + linkLength <= headroom.
bool ReadPieces(const Napi::CallbackInfo& info, size_t index, BatchView* batch) {
  batch->vnet = batch->headroom;
  batch->link = 0;
  if (info.Length() <= index || info[index].IsUndefined()) return true;
  int64_t vnet = 0;
  int64_t link = 0;
  if (!ReadInt(info, index, "vnetLength", 0, static_cast<int64_t>(batch->headroom), &vnet)) return false;
  if (info.Length() > index + 1 && !info[index + 1].IsUndefined() &&
      !ReadInt(info, index + 1, "linkLength", 0, static_cast<int64_t>(batch->headroom) - vnet, &link)) {
    return false;
  }
  batch->vnet = static_cast<size_t>(vnet);
  batch->link = static_cast<size_t>(link);
  return true;
}

bool ReadBatch(const Napi::CallbackInfo& info, const char* count_name, BatchView* batch) {
  Napi::Env env = info.Env();
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "data must be a Uint8Array", true);
    return false;
  }
  if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "lengths must be a Uint32Array", true);
    return false;
  }
  Napi::Uint8Array data = info[1].As<Napi::Uint8Array>();
  Napi::Uint32Array lengths = info[3].As<Napi::Uint32Array>();
  int64_t slot_size = 0;
  int64_t count = 0;
  if (!ReadInt(info, 2, "slotSize", 1, INT32_MAX, &slot_size)) return false;
  if (!ReadInt(info, 4, count_name, 0, static_cast<int64_t>(lengths.ElementLength()), &count)) return false;
  if (static_cast<uint64_t>(count) * static_cast<uint64_t>(slot_size) > data.ByteLength()) {
    ThrowCoded(env, "ERR_OUT_OF_RANGE", std::string(count_name) + " slots of slotSize bytes exceed data");
    return false;
  }
  batch->data = data.Data();
  batch->lengths = lengths.Data();
  batch->slot_size = static_cast<size_t>(slot_size);
  batch->count = static_cast<size_t>(count);
  return ReadHeadroom(info, 5, batch->slot_size, &batch->headroom) && ReadPieces(info, 6, batch);
}

// The two pieces of slot `index` that the device's bytes go to / come from (see BatchView).
int SlotPieces(const BatchView& batch, size_t index, size_t packet_length, struct iovec* iov) {
  uint8_t* slot = batch.data + index * batch.slot_size;
  iov[0].iov_base = slot;
  iov[0].iov_len = batch.vnet;
  iov[1].iov_base = slot + batch.headroom - batch.link;
  iov[1].iov_len = packet_length + batch.link;
  return 2;
}

// ---------------------------------------------------------------------------------------------
// Entering a network namespace on the calling thread (setns(2) with CLONE_NEWNET affects only
// this thread) and coming back, also on every error path.

class NetnsScope {
 public:
  NetnsScope() = default;
  NetnsScope(const NetnsScope&) = delete;
  NetnsScope& operator=(const NetnsScope&) = delete;

  // Returns 0, or an errno with failed_syscall() and failed_subject() saying which step failed.
  int Enter(const std::string& path) {
    if (path.empty()) return 0;
    original_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (original_ < 0) return Fail("open", "/proc/thread-self/ns/net");
    int target = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (target < 0) return Fail("open", "netns " + path);
    int rc = setns(target, CLONE_NEWNET);
    int err = errno;
    close(target);
    if (rc != 0) {
      errno = err;
      return Fail("setns", "netns " + path);
    }
    entered_ = true;
    return 0;
  }

  const char* failed_syscall() const { return failed_; }
  const std::string& failed_subject() const { return subject_; }

  ~NetnsScope() {
    if (entered_ && setns(original_, CLONE_NEWNET) != 0) {
      // Going on in the wrong namespace would open every later device in the wrong place.
      Napi::Error::Fatal("qnat_tun", "setns back to the original network namespace failed");
    }
    if (original_ >= 0) close(original_);
  }

 private:
  int Fail(const char* syscall, std::string subject) {
    int err = errno;
    failed_ = syscall;
    subject_ = std::move(subject);
    return err;
  }

  int original_ = -1;
  bool entered_ = false;
  const char* failed_ = "";
  std::string subject_;
};

// ---------------------------------------------------------------------------------------------
// open(name, netnsPath | null, flags) -> fd

// Flags that open() accepts on top of IFF_NO_PI: IFF_VNET_HDR, IFF_TAP for an Ethernet device
// instead of IFF_TUN, and IFF_MULTI_QUEUE for one queue of a multi-queue device.
//
// Multi-queue (drivers/net/tun.c): each open() + TUNSETIFF with IFF_MULTI_QUEUE attaches one more
// queue (fd) to the device, up to MAX_TAP_QUEUES = 256 (tun_attach: E2BIG beyond). tun_set_iff
// refuses with EINVAL an IFF_MULTI_QUEUE that differs from the existing device's, and tun_attach
// refuses a second fd of a device without it with EBUSY. The other flags (IFF_VNET_HDR...) belong
// to the device and are set by the first queue only: later queues with other flags are not
// refused, the device keeps the first queue's, so every queue must be opened with the same flags.
constexpr int kOptionalOpenFlags = IFF_VNET_HDR | IFF_TAP | IFF_MULTI_QUEUE;

// MAX_TAP_QUEUES in drivers/net/tun.c: the most queues (fds) one device can have.
constexpr int kTunMaxQueues = 256;

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  std::string netns;
  int64_t flags = 0;
  if (!ReadInterfaceName(info, 0, &name) || !ReadNetnsPath(info, 1, &netns) ||
      !ReadInt(info, 2, "flags", 0, 0xffff, &flags)) {
    return env.Undefined();
  }
  if ((flags & ~kOptionalOpenFlags) != 0) {
    ThrowCoded(env, "EINVAL", "open " + name + ": unsupported TUN flags " + std::to_string(flags));
    return env.Undefined();
  }

  NetnsScope scope;
  if (int err = scope.Enter(netns)) {
    ThrowErrno(env, err, scope.failed_syscall(), scope.failed_subject());
    return env.Undefined();
  }
  // The device belongs to the namespace current at open() (tun_chr_open stores current's net).
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    ThrowErrno(env, errno, "open", "/dev/net/tun");
    return env.Undefined();
  }
  struct ifreq request;
  std::memset(&request, 0, sizeof(request));
  std::memcpy(request.ifr_name, name.data(), name.size());
  int kind = (flags & IFF_TAP) != 0 ? IFF_TAP : IFF_TUN;
  request.ifr_flags = static_cast<short>(kind | IFF_NO_PI | (flags & ~IFF_TAP));
  if (ioctl(fd, TUNSETIFF, &request) != 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "TUNSETIFF", name);
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

// setOffload(fd, offloadFlags): TUNSETOFFLOAD with TUN_F_* (only meaningful with IFF_VNET_HDR).
// The offloads belong to the device, not to the queue (tun.c's set_offload sets the device's
// set_features and calls netdev_update_features): one call through any queue sets them for all.
Napi::Value SetOffload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  int64_t offloads = 0;
  if (!ReadFd(info, 0, &fd) || !ReadInt(info, 1, "offloadFlags", 0, UINT32_MAX, &offloads)) return env.Undefined();
  if (ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(offloads)) != 0) {
    ThrowErrno(env, errno, "TUNSETOFFLOAD", "fd " + std::to_string(fd));
  }
  return env.Undefined();
}

// ---------------------------------------------------------------------------------------------
// Link configuration through an AF_INET socket created inside the namespace (a socket's
// namespace is the one current at socket(); net/core/dev_ioctl.c then acts on that namespace).

struct SocketFailure {
  int err = 0;
  const char* syscall = "";
  std::string subject;
};

int OpenInterfaceSocket(const std::string& netns, SocketFailure* failure) {
  NetnsScope scope;
  if ((failure->err = scope.Enter(netns)) != 0) {
    failure->syscall = scope.failed_syscall();
    failure->subject = scope.failed_subject();
    return -1;
  }
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) {
    failure->err = errno;
    failure->syscall = "socket";
    failure->subject = "AF_INET";
  }
  return sock;
}

// An AF_INET socket in `netns` and an ifreq naming `name`, for the SIOC*IF* ioctls. Returns the
// socket, or -1 after throwing.
static int OpenInterfaceRequest(Napi::Env env, const std::string& netns, const std::string& name, struct ifreq* request) {
  SocketFailure failure;
  int sock = OpenInterfaceSocket(netns, &failure);
  if (sock < 0) {
    ThrowErrno(env, failure.err, failure.syscall, failure.subject);
    return -1;
  }
  std::memset(request, 0, sizeof(*request));
  std::memcpy(request->ifr_name, name.data(), name.size());
  return sock;
}

Napi::Value SetMtu(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  std::string netns;
  int64_t mtu = 0;
  if (!ReadInterfaceName(info, 0, &name) || !ReadNetnsPath(info, 1, &netns) ||
      !ReadInt(info, 2, "mtu", 68, 65535, &mtu)) {
    return env.Undefined();
  }
  struct ifreq request;
  int sock = OpenInterfaceRequest(env, netns, name, &request);
  if (sock < 0) return env.Undefined();
  request.ifr_mtu = static_cast<int>(mtu);
  if (ioctl(sock, SIOCSIFMTU, &request) != 0) ThrowErrno(env, errno, "SIOCSIFMTU", name);
  close(sock);
  return env.Undefined();
}

// setMac(name, netnsPath, mac): SIOCSIFHWADDR with a 6-byte Ethernet address (ARPHRD_ETHER), as
// `ip link set NAME address MAC` does for a TAP device (net/core/dev_ioctl.c -> dev_set_mac_address).
Napi::Value SetMac(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  std::string netns;
  if (!ReadInterfaceName(info, 0, &name) || !ReadNetnsPath(info, 1, &netns)) return env.Undefined();
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      info[2].As<Napi::Uint8Array>().ElementLength() != 6) {
    ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "mac must be a Uint8Array of 6 bytes", true);
    return env.Undefined();
  }
  Napi::Uint8Array mac = info[2].As<Napi::Uint8Array>();
  struct ifreq request;
  int sock = OpenInterfaceRequest(env, netns, name, &request);
  if (sock < 0) return env.Undefined();
  request.ifr_hwaddr.sa_family = ARPHRD_ETHER;
  std::memcpy(request.ifr_hwaddr.sa_data, mac.Data(), 6);
  if (ioctl(sock, SIOCSIFHWADDR, &request) != 0) ThrowErrno(env, errno, "SIOCSIFHWADDR", name);
  close(sock);
  return env.Undefined();
}

// setUp(name, netnsPath, up = true): sets or clears IFF_UP (SIOCGIFFLAGS then SIOCSIFFLAGS).
Napi::Value SetUp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  std::string netns;
  if (!ReadInterfaceName(info, 0, &name) || !ReadNetnsPath(info, 1, &netns)) return env.Undefined();
  bool up = info.Length() < 3 || info[2].IsUndefined() || info[2].ToBoolean().Value();
  struct ifreq request;
  int sock = OpenInterfaceRequest(env, netns, name, &request);
  if (sock < 0) return env.Undefined();
  if (ioctl(sock, SIOCGIFFLAGS, &request) != 0) {
    ThrowErrno(env, errno, "SIOCGIFFLAGS", name);
  } else {
    if (up) {
      request.ifr_flags = static_cast<short>(request.ifr_flags | IFF_UP);
    } else {
      request.ifr_flags = static_cast<short>(request.ifr_flags & ~IFF_UP);
    }
    if (ioctl(sock, SIOCSIFFLAGS, &request) != 0) ThrowErrno(env, errno, "SIOCSIFFLAGS", name);
  }
  close(sock);
  return env.Undefined();
}

// ---------------------------------------------------------------------------------------------
// Batched I/O: one native call per batch, one read()/write() per packet.

// readBatch(fd, data, slotSize, lengths, maxPackets, headroom = 0) -> packets read (0 when none
// is queued). Each read fills a slot from its start; lengths[i] is what follows the headroom. A
// packet longer than its slot is cut to the slot (tun_put_user copies what fits); the IPv4
// validator then sees a total length beyond the buffer and counts the drop. A read shorter than
// the headroom (impossible with IFF_VNET_HDR: the header always comes) gives length 0.
Napi::Value ReadBatchCall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  BatchView batch;
  if (!ReadFd(info, 0, &fd) || !ReadBatch(info, "maxPackets", &batch)) return env.Undefined();
  size_t count = 0;
  const bool contiguous = batch.contiguous();
  const size_t before = batch.vnet + batch.link;  // device bytes before the packet
  struct iovec iov[2];
  while (count < batch.count) {
    ssize_t n;
    if (contiguous) {
      n = read(fd, batch.data + count * batch.slot_size, batch.slot_size);
    } else {
      SlotPieces(batch, count, batch.slot_size - batch.headroom, iov);
      n = readv(fd, iov, 2);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      // Report the error once nothing of this batch is left to hand over; it recurs on the next call.
      if (count == 0) {
        ThrowErrno(env, errno, "read", "fd " + std::to_string(fd));
        return env.Undefined();
      }
      break;
    }
    size_t length = static_cast<size_t>(n);
    if (contiguous && length > batch.slot_size) length = batch.slot_size;
    batch.lengths[count] = static_cast<uint32_t>(length > before ? length - before : 0);
    count++;
  }
  return Napi::Number::New(env, static_cast<double>(count));
}

enum class SlotWrite { kWritten, kStop, kThrown };

// Writes slot `index` of a batch: its headroom (the virtio_net_hdr) and the packet after it,
// retrying on EINTR. kStop at EAGAIN, or at a failing packet that is not the call's first (the
// caller's next call, starting there, reports it); kThrown when the first packet fails.
static SlotWrite WriteSlot(Napi::Env env, int fd, const BatchView& batch, size_t index, bool first) {
  size_t length = batch.lengths[index] + batch.headroom;
  if (length > batch.slot_size) {
    ThrowCoded(env, "ERR_OUT_OF_RANGE", "lengths[" + std::to_string(index) + "] exceeds slotSize - headroom");
    return SlotWrite::kThrown;
  }
  const bool contiguous = batch.contiguous();
  struct iovec iov[2];
  if (!contiguous) SlotPieces(batch, index, batch.lengths[index], iov);
  for (;;) {
    ssize_t n = contiguous ? write(fd, batch.data + index * batch.slot_size, length) : writev(fd, iov, 2);
    if (n >= 0) return SlotWrite::kWritten;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK || !first) return SlotWrite::kStop;
    ThrowErrno(env, errno, "write", "fd " + std::to_string(fd));
    return SlotWrite::kThrown;
  }
}

// writeBatch(fd, data, slotSize, lengths, count, headroom = 0) -> packets written; each write
// sends the slot's headroom (the virtio_net_hdr) and the packet after it. Stops at EAGAIN. A failing
// packet after the first is left for the caller's next call, which then reports its error.
Napi::Value WriteBatchCall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  BatchView batch;
  if (!ReadFd(info, 0, &fd) || !ReadBatch(info, "count", &batch)) return env.Undefined();
  size_t count = 0;
  while (count < batch.count) {
    SlotWrite result = WriteSlot(env, fd, batch, count, count == 0);
    if (result == SlotWrite::kThrown) return env.Undefined();
    if (result == SlotWrite::kStop) break;
    count++;
  }
  return Napi::Number::New(env, static_cast<double>(count));
}

// writeSelected(fd, data, slotSize, lengths, verdicts, count, want, headroom = 0) -> slots passed. Writes the
// packets i < count with verdicts[i] == want (the forwarding loop's egress of a processed batch,
// src/dataplane/port.ts), so a batch goes out to each leg without being copied. The return value
// is the index it got to, as writeBatch's: every selected packet before it was written; below
// `count` it stopped at EAGAIN, or before a failing packet that the next call, started there,
// reports by throwing.
Napi::Value WriteSelectedCall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  BatchView batch;
  if (!ReadFd(info, 0, &fd)) return env.Undefined();
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "data must be a Uint8Array", true);
    return env.Undefined();
  }
  if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "lengths must be a Uint32Array", true);
    return env.Undefined();
  }
  if (!info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "verdicts must be an Int32Array", true);
    return env.Undefined();
  }
  Napi::Uint8Array data = info[1].As<Napi::Uint8Array>();
  Napi::Uint32Array lengths = info[3].As<Napi::Uint32Array>();
  Napi::Int32Array verdicts = info[4].As<Napi::Int32Array>();
  int64_t slot_size = 0;
  int64_t count = 0;
  int64_t want = 0;
  size_t max_count = lengths.ElementLength() < verdicts.ElementLength() ? lengths.ElementLength() : verdicts.ElementLength();
  if (!ReadInt(info, 2, "slotSize", 1, INT32_MAX, &slot_size) ||
      !ReadInt(info, 5, "count", 0, static_cast<int64_t>(max_count), &count) ||
      !ReadInt(info, 6, "want", INT32_MIN, INT32_MAX, &want)) {
    return env.Undefined();
  }
  if (static_cast<uint64_t>(count) * static_cast<uint64_t>(slot_size) > data.ByteLength()) {
    ThrowCoded(env, "ERR_OUT_OF_RANGE", "count slots of slotSize bytes exceed data");
    return env.Undefined();
  }
  batch.data = data.Data();
  batch.lengths = lengths.Data();
  batch.slot_size = static_cast<size_t>(slot_size);
  batch.count = static_cast<size_t>(count);
  if (!ReadHeadroom(info, 7, batch.slot_size, &batch.headroom) || !ReadPieces(info, 8, &batch)) return env.Undefined();
  const int32_t* verdict = verdicts.Data();
  size_t index = 0;
  bool first = true;
  while (index < static_cast<size_t>(count)) {
    if (verdict[index] != static_cast<int32_t>(want)) {
      index++;
      continue;
    }
    SlotWrite result = WriteSlot(env, fd, batch, index, first);
    if (result == SlotWrite::kThrown) return env.Undefined();
    if (result == SlotWrite::kStop) break;
    first = false;
    index++;
  }
  return Napi::Number::New(env, static_cast<double>(index));
}

// enterNetns(netnsPath): moves the calling thread (Node's main thread) into a network namespace
// for good (setns(2), CLONE_NEWNET affects only the calling thread). Sockets it creates from then
// on, such as the metadata proxy's listener, belong to that namespace; child processes forked from
// it start there.
Napi::Value EnterNetns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!ReadNetnsPath(info, 0, &path)) return env.Undefined();
  if (path.empty()) {
    ThrowCoded(env, "EINVAL", "enterNetns needs a namespace path");
    return env.Undefined();
  }
  int target = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (target < 0) {
    ThrowErrno(env, errno, "open", "netns " + path);
    return env.Undefined();
  }
  int rc = setns(target, CLONE_NEWNET);
  int err = errno;
  close(target);
  if (rc != 0) ThrowErrno(env, err, "setns", "netns " + path);
  return env.Undefined();
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ReadFd(info, 0, &fd)) return env.Undefined();
  // On Linux the descriptor is released even when close() reports EINTR (man 2 close).
  if (close(fd) != 0 && errno != EINTR) ThrowErrno(env, errno, "close", "fd " + std::to_string(fd));
  return env.Undefined();
}

// ---------------------------------------------------------------------------------------------
// Readiness: a uv_poll_t on Node's own loop calls back into JavaScript with status 0 when the
// fd is readable, or a negative errno (after which libuv has stopped the watcher).

struct PollState {
  uv_poll_t handle;
  napi_env env;
  Napi::FunctionReference callback;
  napi_async_context async_context = nullptr;
  bool stopping = false;
};

void OnPollClosed(uv_handle_t* handle) {
  PollState* state = static_cast<PollState*>(handle->data);
  napi_handle_scope scope;
  if (state->async_context != nullptr && napi_open_handle_scope(state->env, &scope) == napi_ok) {
    napi_async_destroy(state->env, state->async_context);
    napi_close_handle_scope(state->env, scope);
  }
  delete state;
}

void OnPollEvent(uv_poll_t* handle, int status, int /*events*/) {
  PollState* state = static_cast<PollState*>(handle->data);
  if (state->stopping || state->callback.IsEmpty()) return;
  Napi::Env env(state->env);
  Napi::HandleScope scope(env);
  napi_value argv[1] = {Napi::Number::New(env, status)};
  napi_value result;
  napi_status call_status = napi_make_callback(state->env, state->async_context, env.Global(),
                                               state->callback.Value(), 1, argv, &result);
  if (call_status != napi_ok && env.IsExceptionPending()) {
    // A throwing callback is the application's uncaught exception, as for any I/O callback.
    napi_fatal_exception(state->env, env.GetAndClearPendingException().Value());
  }
}

// The JavaScript handle that poll() returns; while it polls it keeps itself alive.
class TunPoll : public Napi::ObjectWrap<TunPoll> {
 public:
  static Napi::Function Define(Napi::Env env) { return DefineClass(env, "TunPoll", {}); }

  explicit TunPoll(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TunPoll>(info) {}
  ~TunPoll() override { Stop(); }

  int Start(Napi::Env env, int fd, Napi::Function callback) {
    PollState* state = new PollState();
    state->env = env;
    int rc = uv_poll_init(LoopOf(env), &state->handle, fd);
    if (rc != 0) {
      delete state;
      return rc;
    }
    state->handle.data = state;
    rc = uv_poll_start(&state->handle, UV_READABLE, OnPollEvent);
    if (rc != 0) {
      state->stopping = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&state->handle), OnPollClosed);
      return rc;
    }
    napi_async_init(env, nullptr, Napi::String::New(env, "qnat.TunPoll"), &state->async_context);
    state->callback = Napi::Persistent(callback);
    state_ = state;
    Ref();
    return 0;
  }

  // Returns whether it was polling.
  bool Stop() {
    if (state_ == nullptr) return false;
    PollState* state = state_;
    state_ = nullptr;
    state->stopping = true;
    state->callback.Reset();
    uv_poll_stop(&state->handle);
    uv_close(reinterpret_cast<uv_handle_t*>(&state->handle), OnPollClosed);
    return true;
  }

 private:
  static uv_loop_t* LoopOf(Napi::Env env) {
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    return loop;
  }

  PollState* state_ = nullptr;
};

struct AddonData {
  Napi::FunctionReference poll_constructor;
};

// poll(fd, callback(status)) -> handle
Napi::Value Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ReadFd(info, 0, &fd)) return env.Undefined();
  if (!info[1].IsFunction()) {
    ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "callback must be a function", true);
    return env.Undefined();
  }
  Napi::Object handle = env.GetInstanceData<AddonData>()->poll_constructor.New({});
  if (env.IsExceptionPending()) return env.Undefined();
  int rc = TunPoll::Unwrap(handle)->Start(env, fd, info[1].As<Napi::Function>());
  if (rc != 0) {
    ThrowErrno(env, -rc, "uv_poll_start", "fd " + std::to_string(fd));
    return env.Undefined();
  }
  return handle;
}

// stopPoll(handle) -> whether it was polling (idempotent).
Napi::Value StopPoll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Function constructor = env.GetInstanceData<AddonData>()->poll_constructor.Value();
  if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(constructor)) {
    ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "stopPoll expects a handle returned by poll()", true);
    return env.Undefined();
  }
  TunPoll* poll = TunPoll::Unwrap(info[0].As<Napi::Object>());
  bool was_polling = poll->Stop();
  if (was_polling) poll->Unref();
  return Napi::Boolean::New(env, was_polling);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  AddonData* data = new AddonData();
  data->poll_constructor = Napi::Persistent(TunPoll::Define(env));
  env.SetInstanceData(data);

  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("setOffload", Napi::Function::New(env, SetOffload, "setOffload"));
  exports.Set("setMtu", Napi::Function::New(env, SetMtu, "setMtu"));
  exports.Set("setUp", Napi::Function::New(env, SetUp, "setUp"));
  exports.Set("setMac", Napi::Function::New(env, SetMac, "setMac"));
  exports.Set("readBatch", Napi::Function::New(env, ReadBatchCall, "readBatch"));
  exports.Set("writeBatch", Napi::Function::New(env, WriteBatchCall, "writeBatch"));
  exports.Set("writeSelected", Napi::Function::New(env, WriteSelectedCall, "writeSelected"));
  exports.Set("enterNetns", Napi::Function::New(env, EnterNetns, "enterNetns"));
  exports.Set("poll", Napi::Function::New(env, Poll, "poll"));
  exports.Set("stopPoll", Napi::Function::New(env, StopPoll, "stopPoll"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));

  Napi::Object constants = Napi::Object::New(env);
  constants.Set("IFF_VNET_HDR", Napi::Number::New(env, IFF_VNET_HDR));  // include/uapi/linux/if_tun.h
  constants.Set("IFF_TAP", Napi::Number::New(env, IFF_TAP));
  constants.Set("IFF_MULTI_QUEUE", Napi::Number::New(env, IFF_MULTI_QUEUE));
  constants.Set("TUN_MAX_QUEUES", Napi::Number::New(env, kTunMaxQueues));
  constants.Set("TUN_F_CSUM", Napi::Number::New(env, TUN_F_CSUM));
  constants.Set("TUN_F_TSO4", Napi::Number::New(env, TUN_F_TSO4));
  constants.Set("TUN_F_TSO6", Napi::Number::New(env, TUN_F_TSO6));
  constants.Set("TUN_F_TSO_ECN", Napi::Number::New(env, TUN_F_TSO_ECN));
  constants.Set("TUN_F_USO4", Napi::Number::New(env, TUN_F_USO4));
  constants.Set("TUN_F_USO6", Napi::Number::New(env, TUN_F_USO6));
  constants.Set("VIRTIO_NET_HDR_LEN", Napi::Number::New(env, kVirtioNetHdrLen));
  constants.Set("IFNAMSIZ", Napi::Number::New(env, IFNAMSIZ));
  exports.Set("constants", constants);
  return exports;
}

}  // namespace

NODE_API_MODULE(qnat_tun, Init)
