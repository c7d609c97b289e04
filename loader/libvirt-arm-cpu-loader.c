/*
 * libvirt-arm-cpu-loader: gives a stock QEMU guest the ID registers of a CPU
 * model, through KVM's own interface for them.
 *
 * Preloaded into QEMU (LD_PRELOAD) with the model's register values in
 * LIBVIRT_ARM_CPU_ID_REGS:
 *
 *     LIBVIRT_ARM_CPU_ID_REGS="ID_AA64ISAR0_EL1@S3_0_C0_C6_0=0x0000100010211120 ..."
 *
 * entries separated by spaces, each [LABEL@]S<op0>_<op1>_C<crn>_C<crm>_<op2>=0x<hex>
 * (LABEL [A-Za-z0-9_]+, used in messages only; up to 16 hex digits; the whole
 * register as the guest must see it).  KVM's firmware pseudo-registers are
 * named FW<n> (KVM_REG_ARM_FW_REG(n): PSCI version, SMCCC workarounds) and
 * FWBMAP<n> (KVM_REG_ARM_FW_FEAT_BMAP_REG(n): hypercall service bitmaps),
 * n 0-15, e.g. PSCI_VERSION@FW0=0x10001.  An entry (of any system
 * register, not only a feature-ID one, or a firmware register) may have the
 * value "absent" instead: the register is kept out of the guest vCPUs'
 * KVM_GET_REG_LIST, so QEMU neither reads nor migrates it and the guest has
 * KVM's default (a register one kernel lists and another does not can then
 * be migrated between them).  Without the variable the loader does
 * nothing (libvirt probes QEMU without the domain's environment).  A malformed
 * variable stops the process at load time (exit 1), so QEMU never runs.
 *
 * It wraps ioctl(2) and, on the guest's VM only:
 *   - after the VM is created, asks KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES (230,
 *     Linux 6.7+: ID registers are writable) and enables
 *     KVM_CAP_ARM_WRITABLE_IMP_ID_REGS (239, Linux 6.15+) when MIDR/REVIDR/AIDR
 *     are among the entries and the kernel offers it (KVM takes it only before
 *     the first vCPU exists: Linux arch/arm64/kvm/arm.c kvm_vm_ioctl_enable_cap);
 *   - after each successful KVM_ARM_VCPU_INIT of one of its vCPUs (the first
 *     one and every re-INIT QEMU does on a system reset), writes every entry
 *     with KVM_SET_ONE_REG and reads it back.  For a vCPU with SVE the first
 *     write waits for the successful KVM_ARM_VCPU_FINALIZE: 6.12's arm.c
 *     refuses KVM_GET_REG_LIST (EPERM) and guest.c the SVE registers until
 *     then, and QEMU reads its register list right after FINALIZE
 *     (target/arm/kvm.c kvm_arch_init_vcpu), so that is the last moment
 *     before QEMU's own copy is taken, on every kernel.  Re-INIT keeps a vCPU
 *     finalized, so after a reset the write follows the INIT at once.
 *     Writing the value KVM already holds is accepted even after the VM has
 *     run (arch/arm64/kvm/sys_regs.c set_id_reg); the loader skips it.
 *   - refuses KVM_RUN on any vCPU it did not configure (a vCPU of another VM,
 *     or of the guest's VM before its registers were written): the guard that
 *     keeps a guest from running with other registers if the rule below ever
 *     failed.
 *
 * Which VM is the guest's: the first KVM_CREATE_VM of the process.  QEMU's
 * kvm_init() (accel/kvm/kvm-all.c) creates the machine's VM while the
 * accelerator is set up, before the board creates any CPU object; the scratch
 * VMs of target/arm/kvm.c (kvm_arm_create_scratch_host_vcpu: -cpu host
 * feature probing, SVE vector lengths) come from CPU objects, so after it,
 * each on its own /dev/kvm descriptor, and are closed without ever running.
 * Checked with LIBVIRT_ARM_CPU_LOADER_DEBUG=1 on QEMU 7.2 and 10.0
 * (tests/test_loader.py).  vCPU descriptors are mapped to their VM when
 * KVM_CREATE_VCPU returns them: descriptor numbers of closed scratch VMs are
 * reused, and every fd a vCPU ioctl can succeed on was returned by a
 * KVM_CREATE_VCPU this wrapper saw, so recording at creation is enough.
 *
 * A refusal (KVM's errno, a value KVM changes on the way in, or any change on
 * a kernel without capability 230, whose rules userspace cannot know) is one
 * line on stderr naming the register, the value, the host's value and the
 * errno; the INIT (or FINALIZE) ioctl then fails with that errno and QEMU
 * stops before the guest runs (kvm_init_vcpu: kvm_arch_init_vcpu failed).
 *
 * LIBVIRT_ARM_CPU_LOADER_DEBUG=1 prints every decision on stderr.
 *
 * Build: gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o libvirt-arm-cpu-loader.so
 *        libvirt-arm-cpu-loader.c -ldl   (loader/build.sh)
 * Only glibc's headers are used (Debian 12's 2.36 suffice); the KVM constants
 * are below, with their source.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* ---- KVM uAPI: Linux include/uapi/linux/kvm.h and
 * arch/arm64/include/uapi/asm/kvm.h (checked against 6.12's headers, see
 * shared testbed notes kvm-constants-from-6.12-uapi.txt). */

#define KVMIO 0xAE

struct kvm_one_reg_layout {         /* struct kvm_one_reg */
    uint64_t id;
    uint64_t addr;
};

struct kvm_vcpu_init_layout {       /* struct kvm_vcpu_init (arm64) */
    uint32_t target;
    uint32_t features[7];
};

struct kvm_enable_cap_layout {      /* struct kvm_enable_cap */
    uint32_t cap;
    uint32_t flags;
    uint64_t args[4];
    uint8_t pad[64];
};

#define KVM_CREATE_VM          _IO(KVMIO, 0x01)
#define KVM_CHECK_EXTENSION    _IO(KVMIO, 0x03)
#define KVM_CREATE_VCPU        _IO(KVMIO, 0x41)
#define KVM_RUN                _IO(KVMIO, 0x80)
#define KVM_ENABLE_CAP         _IOW(KVMIO, 0xa3, struct kvm_enable_cap_layout)
#define KVM_GET_ONE_REG        _IOW(KVMIO, 0xab, struct kvm_one_reg_layout)
#define KVM_SET_ONE_REG        _IOW(KVMIO, 0xac, struct kvm_one_reg_layout)
#define KVM_ARM_VCPU_INIT      _IOW(KVMIO, 0xae, struct kvm_vcpu_init_layout)
#define KVM_ARM_VCPU_FINALIZE  _IOW(KVMIO, 0xc2, int)
#define KVM_GET_REG_LIST       _IOWR(KVMIO, 0xb0, uint64_t)   /* struct kvm_reg_list: n, reg[] */

_Static_assert(KVM_CREATE_VM == 0xae01, "KVM_CREATE_VM");
_Static_assert(KVM_CREATE_VCPU == 0xae41, "KVM_CREATE_VCPU");
_Static_assert(KVM_ENABLE_CAP == 0x4068aea3, "KVM_ENABLE_CAP");
_Static_assert(KVM_GET_ONE_REG == 0x4010aeab, "KVM_GET_ONE_REG");
_Static_assert(KVM_SET_ONE_REG == 0x4010aeac, "KVM_SET_ONE_REG");
_Static_assert(KVM_ARM_VCPU_INIT == 0x4020aeae, "KVM_ARM_VCPU_INIT");
_Static_assert(KVM_ARM_VCPU_FINALIZE == 0x4004aec2, "KVM_ARM_VCPU_FINALIZE");
_Static_assert(KVM_GET_REG_LIST == 0xc008aeb0, "KVM_GET_REG_LIST");

#define KVM_ARM_VCPU_SVE 4          /* features[0] bit, and FINALIZE's argument */
#define KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES 230
#define KVM_CAP_ARM_WRITABLE_IMP_ID_REGS 239

/* ARM64_SYS_REG(): KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG | encoding */
#define KVM_SYSREG_BASE 0x6030000000130000ULL
/* KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW (0x14) or KVM_REG_ARM_FW_FEAT_BMAP (0x16) */
#define FW_ID(n)      (0x6030000000140000ULL | (uint64_t)(n))
#define FWBMAP_ID(n)  (0x6030000000160000ULL | (uint64_t)(n))
#define SYSREG_ID(op0, op1, crn, crm, op2) \
    (KVM_SYSREG_BASE | (uint64_t)(op0) << 14 | (uint64_t)(op1) << 11 | \
     (uint64_t)(crn) << 7 | (uint64_t)(crm) << 3 | (uint64_t)(op2))

/* ---- the configured registers */

#define PREFIX "libvirt-arm-cpu-loader: "
#define ENV_VALUES "LIBVIRT_ARM_CPU_ID_REGS"
#define ENV_DEBUG "LIBVIRT_ARM_CPU_LOADER_DEBUG"

/* KVM's feature-ID space has 3 * 8 * 8 slots (KVM_ARM_FEATURE_ID_RANGE_SIZE),
 * plus 16 FW<n> and 16 FWBMAP<n>: with no register named twice, no valid
 * variable has more entries. */
#define MAX_ENTRIES (192 + 32)
#define MAX_LABEL 63
#define MAX_HEX_DIGITS 16

struct entry {
    uint64_t id;                    /* KVM ONE_REG id */
    uint64_t value;                 /* what the guest must see */
    uint64_t host;                  /* what KVM held before the first write */
    int host_known;
    int hidden;                     /* "absent": kept out of KVM_GET_REG_LIST, never written */
    char name[MAX_LABEL + 24];      /* "LABEL (S3_0_C0_C6_0)" or "S3_0_C0_C6_0" */
};

static struct entry entries[MAX_ENTRIES];
static int n_entries;
static int n_hidden;
static int wants_imp_id;            /* MIDR, REVIDR or AIDR among the entries */
static int active;                  /* the variable was set (and is valid) */
static int debug;

/* ---- what the wrapper knows about descriptors */

#define MAX_FDS 4096

enum fd_kind { FD_UNKNOWN = 0, FD_VM, FD_VCPU };

struct fd_info {
    unsigned char kind;
    unsigned char guest;            /* the guest's VM, or one of its vCPUs */
    unsigned char sve;              /* last INIT asked for SVE */
    unsigned char finalized;        /* SVE finalized (stays so across re-INIT) */
    unsigned char configured;       /* registers written since the last INIT */
    unsigned char run_seen;         /* KVM_RUN logged or refused once */
    unsigned inits;                 /* successful KVM_ARM_VCPU_INITs */
    int vm;                         /* a vCPU's VM descriptor */
};

static struct fd_info fds[MAX_FDS];
static int guest_vm = -1;
static int vms_created;
static int masks_known;             /* capability 230 on the guest's VM */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

typedef int (*ioctl_fn)(int, unsigned long, ...);
static ioctl_fn real_ioctl;

/* ---- output: one write(2) per line, so lines of several threads never mix */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char buf[1024];
    size_t len = sizeof(PREFIX) - 1;
    va_list ap;
    int n;

    memcpy(buf, PREFIX, len);
    va_start(ap, fmt);
    n = vsnprintf(buf + len, sizeof(buf) - len - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    len += (size_t)n < sizeof(buf) - len - 1 ? (size_t)n : sizeof(buf) - len - 2;
    buf[len++] = '\n';
    if (write(STDERR_FILENO, buf, len) < 0) {
        /* nothing else to tell it to */
    }
}

#define DEBUG(...) do { if (debug) say("debug: " __VA_ARGS__); } while (0)

static const char *errno_name(int err)
{
    const char *name = strerrorname_np(err);   /* glibc 2.32+ */
    return name ? name : "unknown errno";
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* ---- parsing LIBVIRT_ARM_CPU_ID_REGS */

static int bad_entry(int index, const char *text, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int bad_entry(int index, const char *text, size_t len, const char *fmt, ...)
{
    char why[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    say(ENV_VALUES " entry %d '%.*s%s': %s", index, (int)(len > 100 ? 100 : len), text,
        len > 100 ? "..." : "", why);
    return -1;
}

/* A decimal number of at most two digits at *p, advancing *p. */
static int small_number(const char **p, const char *end, unsigned *out)
{
    unsigned v = 0;
    int digits = 0;

    while (*p < end && **p >= '0' && **p <= '9' && digits < 3) {
        v = v * 10 + (unsigned)(**p - '0');
        (*p)++;
        digits++;
    }
    if (digits == 0 || digits > 2)
        return -1;
    *out = v;
    return 0;
}

static int expect(const char **p, const char *end, char c)
{
    if (*p < end && **p == c) {
        (*p)++;
        return 0;
    }
    return -1;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The 0x<hex> value of an entry (*p just after '='); 0, or -1 after one line. */
static int parse_hex_value(int index, const char *text, size_t len, const char *p,
                           uint64_t *out)
{
    const char *end = text + len;
    uint64_t value = 0;
    size_t digits;

    if (end - p < 2 || p[0] != '0' || p[1] != 'x')
        return bad_entry(index, text, len, "value '%.*s' does not start with 0x",
                         (int)(end - p), p);
    p += 2;
    digits = (size_t)(end - p);
    if (digits == 0)
        return bad_entry(index, text, len, "no hex digits after 0x");
    for (const char *q = p; q < end; q++)
        if (hex_digit(*q) < 0)
            return bad_entry(index, text, len, "value has '%c', not a hex digit", *q);
    if (digits > MAX_HEX_DIGITS)
        return bad_entry(index, text, len,
                         "value has %zu hex digits, more than 16 (64 bits)", digits);
    for (; p < end; p++)
        value = value << 4 | (uint64_t)hex_digit(*p);
    *out = value;
    return 0;
}

static int add_entry(int index, const char *text, size_t len, size_t label_len, uint64_t id,
                     uint64_t value, int hidden, const char *enc_name)
{
    struct entry *e;
    int i;

    for (i = 0; i < n_entries; i++)
        if (entries[i].id == id)
            return bad_entry(index, text, len, "%s named again (entry %d: %s)", enc_name,
                             i + 1, entries[i].name);
    if (n_entries == MAX_ENTRIES)   /* unreachable: duplicates are refused */
        return bad_entry(index, text, len, "more than %d entries", MAX_ENTRIES);
    e = &entries[n_entries++];
    e->id = id;
    e->value = value;
    e->hidden = hidden;
    n_hidden += hidden;
    if (label_len)
        snprintf(e->name, sizeof(e->name), "%.*s (%s)", (int)label_len, text, enc_name);
    else
        snprintf(e->name, sizeof(e->name), "%s", enc_name);
    return 0;
}

/* FW<n>=0x... or FWBMAP<n>=0x...|absent (enc .. eq is the encoding). */
static int parse_firmware_entry(int index, const char *text, size_t len, size_t label_len,
                                const char *enc, const char *eq)
{
    const char *p = enc + 2, *end = text + len;
    char enc_name[16];
    int bitmap = 0;
    unsigned n;
    uint64_t value = 0;

    if (eq - p >= 4 && memcmp(p, "BMAP", 4) == 0) {
        bitmap = 1;
        p += 4;
    }
    if (small_number(&p, eq, &n) || p != eq || n > 15)
        return bad_entry(index, text, len, "'%.*s' is not FW<n> or FWBMAP<n> (n 0-15)",
                         (int)(eq - enc), enc);
    snprintf(enc_name, sizeof(enc_name), "%s%u", bitmap ? "FWBMAP" : "FW", n);
    if ((size_t)(end - eq - 1) == 6 && memcmp(eq + 1, "absent", 6) == 0)
        return add_entry(index, text, len, label_len, bitmap ? FWBMAP_ID(n) : FW_ID(n), 0, 1,
                         enc_name);
    if (parse_hex_value(index, text, len, eq + 1, &value) < 0)
        return -1;
    return add_entry(index, text, len, label_len, bitmap ? FWBMAP_ID(n) : FW_ID(n), value, 0,
                     enc_name);
}

static int parse_entry(int index, const char *text, size_t len)
{
    const char *eq, *at, *enc, *p;
    unsigned op0, op1, crn, crm, op2;
    size_t label_len = 0;
    uint64_t id, value = 0;
    char enc_name[24];

    eq = memchr(text, '=', len);
    if (!eq)
        return bad_entry(index, text, len, "no '=' (write LABEL@S3_0_C0_C6_0=0x...)");
    at = memchr(text, '@', (size_t)(eq - text));
    enc = text;
    if (at) {
        label_len = (size_t)(at - text);
        if (label_len == 0)
            return bad_entry(index, text, len, "empty label before '@'");
        if (label_len > MAX_LABEL)
            return bad_entry(index, text, len, "label longer than %d characters", MAX_LABEL);
        for (p = text; p < at; p++)
            if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                  (*p >= '0' && *p <= '9') || *p == '_'))
                return bad_entry(index, text, len,
                                 "label has '%c': only letters, digits and '_'", *p);
        enc = at + 1;
    }

    p = enc;
    if (eq - enc >= 2 && enc[0] == 'F' && enc[1] == 'W')
        return parse_firmware_entry(index, text, len, label_len, enc, eq);
    if (expect(&p, eq, 'S') || small_number(&p, eq, &op0) || expect(&p, eq, '_') ||
        small_number(&p, eq, &op1) || expect(&p, eq, '_') || expect(&p, eq, 'C') ||
        small_number(&p, eq, &crn) || expect(&p, eq, '_') || expect(&p, eq, 'C') ||
        small_number(&p, eq, &crm) || expect(&p, eq, '_') || small_number(&p, eq, &op2) ||
        p != eq)
        return bad_entry(index, text, len,
                         "'%.*s' is not an encoding S<op0>_<op1>_C<crn>_C<crm>_<op2>",
                         (int)(eq - enc), enc);
    if (op0 > 3 || op1 > 7 || crn > 15 || crm > 15 || op2 > 7)
        return bad_entry(index, text, len, "'%.*s' is not a system register encoding",
                         (int)(eq - enc), enc);
    id = SYSREG_ID(op0, op1, crn, crm, op2);
    snprintf(enc_name, sizeof(enc_name), "S%u_%u_C%u_C%u_%u", op0, op1, crn, crm, op2);
    /* any system register may be kept out of the guest's list; only the
     * feature-ID registers are written */
    if ((size_t)(text + len - eq - 1) == 6 && memcmp(eq + 1, "absent", 6) == 0)
        return add_entry(index, text, len, label_len, id, 0, 1, enc_name);
    /* KVM_ARM_FEATURE_ID_RANGE (arch/arm64/include/uapi/asm/kvm.h): op0 3,
     * op1 0, 1 or 3, CRn 0, CRm 0-7, op2 0-7. */
    if (!(op0 == 3 && (op1 == 0 || op1 == 1 || op1 == 3) && crn == 0 && crm <= 7))
        return bad_entry(index, text, len,
                         "S%u_%u_C%u_C%u_%u is not in KVM's feature-ID space "
                         "(op0 3, op1 0/1/3, CRn 0, CRm 0-7)", op0, op1, crn, crm, op2);
    if (op1 == 0 && crm == 0 && op2 == 5)
        return bad_entry(index, text, len,
                         "S3_0_C0_C0_5 is MPIDR_EL1, which KVM sets per vCPU: leave it out");

    if (parse_hex_value(index, text, len, eq + 1, &value) < 0)
        return -1;
    if (add_entry(index, text, len, label_len, id, value, 0, enc_name) < 0)
        return -1;
    /* MIDR_EL1 S3_0_C0_C0_0, REVIDR_EL1 S3_0_C0_C0_6, AIDR_EL1 S3_1_C0_C0_7 */
    if (id == SYSREG_ID(3, 0, 0, 0, 0) || id == SYSREG_ID(3, 0, 0, 0, 6) ||
        id == SYSREG_ID(3, 1, 0, 0, 7))
        wants_imp_id = 1;
    return 0;
}

static int parse_values(const char *text)
{
    const char *p = text;
    int index = 0;

    while (*p) {
        const char *start;

        while (*p == ' ')
            p++;
        if (!*p)
            break;
        start = p;
        while (*p && *p != ' ')
            p++;
        if (parse_entry(++index, start, (size_t)(p - start)) < 0)
            return -1;
    }
    if (n_entries == 0) {
        say(ENV_VALUES " is set but has no entries");
        return -1;
    }
    return 0;
}

__attribute__((constructor)) static void loader_init(void)
{
    const char *dbg = getenv(ENV_DEBUG), *text;

    real_ioctl = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
    debug = dbg && *dbg && strcmp(dbg, "0") != 0;
    text = getenv(ENV_VALUES);
    if (!text) {
        DEBUG(ENV_VALUES " not set: doing nothing");
        return;
    }
    if (parse_values(text) < 0)
        _exit(1);
    active = 1;
    DEBUG("%d registers configured (MIDR/REVIDR/AIDR among them: %s); %d kept out of the "
          "guest's register list", n_entries, wants_imp_id ? "yes" : "no", n_hidden);
}

/* ---- the decisions */

static struct fd_info *info(int fd)
{
    return fd >= 0 && fd < MAX_FDS ? &fds[fd] : NULL;
}

static void on_create_vm(int kvm_fd, int vm)
{
    struct fd_info *v = info(vm);
    int cap;

    vms_created++;
    if (vms_created == 1 && v) {
        guest_vm = vm;
        memset(v, 0, sizeof(*v));
        v->kind = FD_VM;
        v->guest = 1;
        masks_known = real_ioctl(vm, KVM_CHECK_EXTENSION,
                                 (unsigned long)KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES) > 0;
        DEBUG("KVM_CREATE_VM on fd %d -> VM fd %d: the guest's VM (the process's first); "
              "capability 230 (writable ID registers): %s", kvm_fd, vm,
              masks_known ? "yes" : "no, only the host's values are possible");
        if (!wants_imp_id)
            return;
        cap = real_ioctl(vm, KVM_CHECK_EXTENSION,
                         (unsigned long)KVM_CAP_ARM_WRITABLE_IMP_ID_REGS);
        if (cap > 0) {
            struct kvm_enable_cap_layout en;

            memset(&en, 0, sizeof(en));
            en.cap = KVM_CAP_ARM_WRITABLE_IMP_ID_REGS;
            if (real_ioctl(vm, KVM_ENABLE_CAP, &en) == 0)
                DEBUG("VM fd %d: enabled capability 239 (writable MIDR/REVIDR/AIDR)", vm);
            else   /* only before a vCPU exists, which is now: a changed MIDR is refused later */
                DEBUG("VM fd %d: enabling capability 239 failed: %s", vm, errno_name(errno));
        } else {
            DEBUG("VM fd %d: capability 239 not offered: MIDR/REVIDR/AIDR stay the host's",
                  vm);
        }
        return;
    }
    if (vms_created == 1) {
        say("the guest's VM got descriptor %d, beyond the %d this loader tracks: "
            "its vCPUs will not run", vm, MAX_FDS);
        return;
    }
    if (v) {
        memset(v, 0, sizeof(*v));
        v->kind = FD_VM;
    }
    DEBUG("KVM_CREATE_VM on fd %d -> VM fd %d: scratch VM (VM number %d), left alone",
          kvm_fd, vm, vms_created);
}

static void on_create_vcpu(int vm, int vcpu, unsigned long index)
{
    struct fd_info *c = info(vcpu);

    if (!c)
        return;   /* untracked: KVM_RUN on it is refused */
    memset(c, 0, sizeof(*c));
    c->kind = FD_VCPU;
    c->vm = vm;
    c->guest = vm == guest_vm;
    DEBUG("KVM_CREATE_VCPU %lu on VM fd %d -> vCPU fd %d: %s", index, vm, vcpu,
          c->guest ? "a guest vCPU" : "a scratch vCPU, left alone");
}

/* Write every entry into the vCPU; 0, or -1 with errno set after one line. */
static int configure(int vcpu, const char *when)
{
    double t0 = now_us();
    int written = 0, i;

    for (i = 0; i < n_entries; i++) {
        struct entry *e = &entries[i];
        uint64_t cur = 0;
        struct kvm_one_reg_layout reg = { .id = e->id, .addr = (uintptr_t)&cur };
        int err;

        if (e->hidden)
            continue;
        if (real_ioctl(vcpu, KVM_GET_ONE_REG, &reg) < 0) {
            err = errno;
            say("KVM cannot read %s: %s%s", e->name, errno_name(err),
                err == ENOENT ? " (not a register this kernel has)" : "");
            errno = err;
            return -1;
        }
        if (!e->host_known) {
            e->host = cur;
            e->host_known = 1;
        }
        if (cur == e->value)
            continue;
        if (!masks_known) {
            say("KVM refused %s = 0x%016llx: this kernel has no capability 230 "
                "(KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES, Linux 6.7+), so only the host's "
                "values are possible (this host has 0x%016llx)",
                e->name, (unsigned long long)e->value, (unsigned long long)e->host);
            errno = EINVAL;
            return -1;
        }
        reg.addr = (uintptr_t)&e->value;
        if (real_ioctl(vcpu, KVM_SET_ONE_REG, &reg) < 0) {
            err = errno;
            say("KVM refused %s = 0x%016llx: %s (this host has 0x%016llx)", e->name,
                (unsigned long long)e->value, errno_name(err), (unsigned long long)e->host);
            errno = err;
            return -1;
        }
        reg.addr = (uintptr_t)&cur;
        if (real_ioctl(vcpu, KVM_GET_ONE_REG, &reg) < 0 || cur != e->value) {
            say("KVM refused %s = 0x%016llx: it reads back 0x%016llx (this host has 0x%016llx)",
                e->name, (unsigned long long)e->value, (unsigned long long)cur,
                (unsigned long long)e->host);
            errno = EINVAL;
            return -1;
        }
        written++;
    }
    DEBUG("vCPU fd %d (%s): %d registers checked, %d written, in %.0f us", vcpu, when,
          n_entries, written, now_us() - t0);
    return 0;
}

static int after_init(int vcpu, const struct kvm_vcpu_init_layout *init)
{
    struct fd_info *c = info(vcpu);

    if (!c || c->kind != FD_VCPU || !c->guest) {
        DEBUG("KVM_ARM_VCPU_INIT on fd %d: not a guest vCPU, left alone", vcpu);
        return 0;
    }
    c->inits++;
    c->sve = init && (init->features[0] >> KVM_ARM_VCPU_SVE & 1);
    if (c->sve && !c->finalized) {
        DEBUG("KVM_ARM_VCPU_INIT on guest vCPU fd %d: SVE, so the write waits for "
              "KVM_ARM_VCPU_FINALIZE", vcpu);
        return 0;
    }
    if (configure(vcpu, c->inits > 1 ? "after re-INIT" : "after INIT") < 0)
        return -1;
    c->configured = 1;
    return 0;
}

static int after_finalize(int vcpu, int what)
{
    struct fd_info *c = info(vcpu);

    if (!c || c->kind != FD_VCPU || !c->guest || what != KVM_ARM_VCPU_SVE)
        return 0;
    c->finalized = 1;
    if (c->configured)
        return 0;
    if (configure(vcpu, "after SVE FINALIZE") < 0)
        return -1;
    c->configured = 1;
    return 0;
}

/* 0 to let KVM_RUN through; -1 (errno EPERM) for a vCPU the loader did not configure. */
static int guard_run(int vcpu)
{
    struct fd_info *c = info(vcpu);

    if (c && c->kind == FD_VCPU && c->guest && __atomic_load_n(&c->configured, __ATOMIC_ACQUIRE)) {
        if (debug && !c->run_seen) {
            c->run_seen = 1;
            DEBUG("KVM_RUN on guest vCPU fd %d: registers written, let through", vcpu);
        }
        return 0;
    }
    if (!c || !c->run_seen) {
        if (c)
            c->run_seen = 1;
        say("refusing KVM_RUN on vCPU fd %d: %s", vcpu,
            !c || c->kind != FD_VCPU ? "a vCPU this loader did not see created"
            : !c->guest ? "a vCPU of a VM other than the guest's (the process's first)"
            : "its ID registers were not written");
    }
    errno = EPERM;
    return -1;
}

/* KVM_GET_REG_LIST succeeded on *vcpu*: drop the hidden registers from a
 * guest vCPU's list (struct kvm_reg_list: u64 n, then n ids), so QEMU never
 * reads, writes or migrates them. */
static void hide_registers(int vcpu, uint64_t *list)
{
    const struct fd_info *c = info(vcpu);
    uint64_t n, i, kept = 0;
    int j, hide;

    if (!c || c->kind != FD_VCPU || !c->guest || !n_hidden || !list)
        return;
    n = list[0];
    for (i = 0; i < n; i++) {
        hide = 0;
        for (j = 0; j < n_entries; j++)
            if (entries[j].hidden && entries[j].id == list[1 + i])
                hide = 1;
        if (hide)
            DEBUG("KVM_GET_REG_LIST on guest vCPU fd %d: register 0x%016llx left out", vcpu,
                  (unsigned long long)list[1 + i]);
        else
            list[1 + kept++] = list[1 + i];
    }
    list[0] = kept;
}

/* QEMU's own KVM_SET_ONE_REG failed on a guest vCPU: name the register.
 * QEMU says only "error while loading state for instance 0x0 of device 'cpu'"
 * or "Failed to put registers after init" when the destination's KVM refuses
 * one register of the source's list; this line says which, and the value. */
static void qemu_write_refused(int vcpu, const struct kvm_one_reg_layout *reg, int err)
{
    const struct fd_info *c = info(vcpu);
    uint64_t value = 0;
    const char *label = NULL;
    int i;

    if (!c || c->kind != FD_VCPU || !c->guest)
        return;
    for (i = 0; i < n_entries; i++)
        if (entries[i].id == reg->id)
            label = entries[i].name;
    if ((reg->id & 0x0030000000000000ULL) == 0x0030000000000000ULL)   /* KVM_REG_SIZE_U64 */
        memcpy(&value, (const void *)(uintptr_t)reg->addr, sizeof(value));
    else if ((reg->id & 0x0030000000000000ULL) == 0x0020000000000000ULL) { /* U32 */
        uint32_t v32;
        memcpy(&v32, (const void *)(uintptr_t)reg->addr, sizeof(v32));
        value = v32;
    }
    if (label)
        say("QEMU's write of %s = 0x%016llx refused by KVM: %s", label,
            (unsigned long long)value, errno_name(err));
    else if ((reg->id & 0xffff0000ULL) == 0x00130000ULL)   /* KVM_REG_ARM64_SYSREG */
        say("QEMU's write of S%u_%u_C%u_C%u_%u = 0x%016llx refused by KVM: %s",
            (unsigned)(reg->id >> 14 & 3), (unsigned)(reg->id >> 11 & 7),
            (unsigned)(reg->id >> 7 & 15), (unsigned)(reg->id >> 3 & 15),
            (unsigned)(reg->id & 7), (unsigned long long)value, errno_name(err));
    else
        say("QEMU's write of register 0x%016llx = 0x%llx refused by KVM: %s",
            (unsigned long long)reg->id, (unsigned long long)value, errno_name(err));
}

/* ---- the wrapper */

int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    void *arg;
    int ret, err;

    va_start(ap, request);
    arg = va_arg(ap, void *);
    va_end(ap);

    if (!real_ioctl) {   /* a constructor that ran before ours */
        real_ioctl = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
        if (!real_ioctl) {
            errno = ENOSYS;
            return -1;
        }
    }
    if (!active)
        return real_ioctl(fd, request, arg);

    /* The kernel takes the request as an unsigned int. */
    switch ((unsigned int)request) {
    case KVM_RUN:
        if (guard_run(fd) < 0)
            return -1;
        return real_ioctl(fd, request, arg);
    case KVM_CREATE_VM:
        ret = real_ioctl(fd, request, arg);
        if (ret >= 0) {
            err = errno;
            pthread_mutex_lock(&lock);
            on_create_vm(fd, ret);
            pthread_mutex_unlock(&lock);
            errno = err;
        }
        return ret;
    case KVM_CREATE_VCPU:
        ret = real_ioctl(fd, request, arg);
        if (ret >= 0) {
            pthread_mutex_lock(&lock);
            on_create_vcpu(fd, ret, (unsigned long)arg);
            pthread_mutex_unlock(&lock);
        }
        return ret;
    case KVM_ARM_VCPU_INIT:
        if (info(fd))
            __atomic_store_n(&fds[fd].configured, 0, __ATOMIC_RELEASE);
        ret = real_ioctl(fd, request, arg);
        if (ret == 0) {
            pthread_mutex_lock(&lock);
            ret = after_init(fd, arg);
            err = errno;
            pthread_mutex_unlock(&lock);
            errno = err;
        }
        return ret;
    case KVM_GET_REG_LIST:
        ret = real_ioctl(fd, request, arg);
        if (ret == 0) {
            err = errno;
            pthread_mutex_lock(&lock);
            hide_registers(fd, arg);
            pthread_mutex_unlock(&lock);
            errno = err;
        }
        return ret;
    case KVM_SET_ONE_REG:
        ret = real_ioctl(fd, request, arg);
        if (ret < 0 && arg) {
            err = errno;
            pthread_mutex_lock(&lock);
            qemu_write_refused(fd, arg, err);
            pthread_mutex_unlock(&lock);
            errno = err;
        }
        return ret;
    case KVM_ARM_VCPU_FINALIZE:
        ret = real_ioctl(fd, request, arg);
        if (ret == 0 && arg) {
            pthread_mutex_lock(&lock);
            ret = after_finalize(fd, *(const int *)arg);
            err = errno;
            pthread_mutex_unlock(&lock);
            errno = err;
        }
        return ret;
    default:
        return real_ioctl(fd, request, arg);
    }
}
