/*
 * userfaultfd uapi declarations (<linux/userfaultfd.h>) for cffi.
 *
 * The kernel marks struct uffd_msg packed, but only the outer struct: its
 * fields already sit at natural offsets (the union starts at 8), so the
 * natural layout is identical, while packing every struct (cffi's only
 * option) would shrink the inner pagefault struct from 24 to 20 bytes.
 * tests/test_layout.py caught exactly that; it checks every field here.
 */
#define UFFD_API 170
#define UFFDIO 170
#define USERFAULTFD_IOC 170
#define UFFD_USER_MODE_ONLY 1
#define UFFD_EVENT_PAGEFAULT 18
#define UFFD_PAGEFAULT_FLAG_WRITE 1
#define UFFD_FEATURE_MISSING_SHMEM 32
#define UFFD_FEATURE_THREAD_ID 256
#define UFFDIO_REGISTER_MODE_MISSING 1
#define UFFDIO_COPY_MODE_DONTWAKE 1
#define _UFFDIO_REGISTER 0
#define _UFFDIO_UNREGISTER 1
#define _UFFDIO_WAKE 2
#define _UFFDIO_COPY 3
#define _UFFDIO_ZEROPAGE 4
#define _UFFDIO_API 63

struct uffd_msg {
    uint8_t event;
    uint8_t reserved1;
    uint16_t reserved2;
    uint32_t reserved3;
    union {
        struct {
            uint64_t flags;
            uint64_t address;
            union {
                uint32_t ptid;
            } feat;
        } pagefault;
        struct {
            uint64_t reserved1;
            uint64_t reserved2;
            uint64_t reserved3;
        } reserved;
    } arg;
};

struct uffdio_api {
    uint64_t api;
    uint64_t features;
    uint64_t ioctls;
};

struct uffdio_range {
    uint64_t start;
    uint64_t len;
};

struct uffdio_register {
    struct uffdio_range range;
    uint64_t mode;
    uint64_t ioctls;
};

struct uffdio_copy {
    uint64_t dst;
    uint64_t src;
    uint64_t len;
    uint64_t mode;
    int64_t copy;
};

struct uffdio_zeropage {
    struct uffdio_range range;
    uint64_t mode;
    int64_t zeropage;
};
