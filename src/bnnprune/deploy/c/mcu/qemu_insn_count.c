/* qemu_insn_count.c: a qemu TCG plugin that counts the guest instructions executed between
 * calls of one function (the firmware's mcu_mark), for instructions per inference.
 *
 *   cc -shared -fPIC -O2 qemu_insn_count.c -o libinsncount.so
 *   qemu-system-arm ... -plugin ./libinsncount.so,mark=0x1234,out=insns.txt[,blocks=b.txt]
 *
 * out gets one line per pair of mark calls: the instructions executed from the first
 * mark to the second (one model_run plus a few of call overhead). Instructions, not
 * cycles: qemu does not model pipelines, caches or wait states. blocks (optional) gets,
 * at exit, one line per translated block of the whole run: its start address (hex), its
 * instructions and how often it ran, for a profile by function (addresses from nm).
 * ops=A0:A1:...,opsout=FILE (optional) split each inference by phase: the instructions
 * from entering the function at Ak to entering the next listed function (or the second
 * mark) go to k, those before the first to a prologue slot; opsout gets one line per
 * inference, the prologue first, and the line sums to that inference's count.
 *
 * Debian's qemu ships no qemu-plugin.h, so the few declarations used are written here
 * against qemu's plugin API version 1, which qemu 4.2 to 8.x load (Debian 12 has 7.2);
 * qemu 9 and later ask for version 2 and would need their own qemu-plugin.h.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- from qemu's include/qemu/qemu-plugin.h (API version 1) ---- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system;
    };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                           qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb,
                                    void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;
/* ---- end of the API declarations ---- */

static uint64_t executed;       /* instructions of every block entered so far */
static uint64_t mark_addr;
static FILE *out;

/* the blocks= profile: one record per translation, in a growing array of pointers */
typedef struct {
    uint64_t addr, insns, runs;
} block_t;
static FILE *blocks_out;
static block_t **blocks;
static size_t nblocks, capblocks;
static uint64_t last_mark;
static unsigned long marks;

/* the ops= phases: entry addresses, and per inference the instructions of each phase */
#define MAX_OPS 1024
static FILE *ops_out;
static uint64_t op_addr[MAX_OPS];
static uint64_t op_insns[MAX_OPS + 1]; /* [0]: the prologue, [k + 1]: phase k */
static size_t nops, phase;
static uint64_t phase_start;

/* Close the running phase at ``now`` instructions and open ``next``. */
static void switch_phase(size_t next, uint64_t now)
{
    op_insns[phase] += now - phase_start;
    phase = next;
    phase_start = now;
}

/* A listed function's entry: its block's instructions were already added on entering the
 * block (userdata: their number), and they belong to the phase that opens here. */
static void on_op(unsigned int vcpu_index, void *userdata)
{
    uintptr_t packed = (uintptr_t)userdata;
    (void)vcpu_index;
    if (marks % 2 == 1)
        switch_phase((packed >> 16) + 1, executed - (packed & 0xffff));
}

/* A block's instructions are added when it is entered; the mark's snapshot is taken at
 * its first instruction (a block of its own: it is only ever reached by a call). */
static void on_mark(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    size_t k;
    if (marks++ % 2 == 1) {
        fprintf(out, "%" PRIu64 "\n", executed - last_mark);
        if (ops_out != NULL) {
            switch_phase(0, executed);
            for (k = 0; k <= nops; ++k)
                fprintf(ops_out, "%s%" PRIu64, k ? " " : "", op_insns[k]);
            fputc('\n', ops_out);
        }
    }
    last_mark = executed;
    memset(op_insns, 0, sizeof op_insns);
    phase = 0;
    phase_start = executed;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t i, k, n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed, n);
    if (blocks_out != NULL && n > 0) {
        block_t *b = calloc(1, sizeof *b);
        if (nblocks == capblocks) {
            capblocks = capblocks ? 2 * capblocks : 1024;
            blocks = realloc(blocks, capblocks * sizeof *blocks);
        }
        if (b == NULL || blocks == NULL) {
            fprintf(stderr, "qemu_insn_count: out of memory\n");
            exit(1);
        }
        b->addr = qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, 0));
        b->insns = n;
        blocks[nblocks++] = b;
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->runs, 1);
    }
    for (i = 0; i < n; ++i) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        if (pc == mark_addr)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, QEMU_PLUGIN_CB_NO_REGS, NULL);
        for (k = 0; k < nops && i == 0; ++k)
            if (pc == op_addr[k])
                qemu_plugin_register_vcpu_insn_exec_cb(
                    insn, on_op, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)((k << 16) | n));
    }
}

static void on_quit(qemu_plugin_id_t id, void *userdata)
{
    size_t i;
    (void)id;
    (void)userdata;
    fclose(out);
    if (ops_out != NULL)
        fclose(ops_out);
    if (blocks_out != NULL) {
        for (i = 0; i < nblocks; ++i)
            fprintf(blocks_out, "%" PRIx64 " %" PRIu64 " %" PRIu64 "\n", blocks[i]->addr,
                    blocks[i]->insns, blocks[i]->runs);
        fclose(blocks_out);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    const char *path = NULL, *blocks_path = NULL, *ops_path = NULL, *ops = NULL;
    char *end;
    int i;
    (void)info;
    for (i = 0; i < argc; ++i) {
        if (strncmp(argv[i], "mark=", 5) == 0)
            mark_addr = strtoull(argv[i] + 5, NULL, 0) & ~(uint64_t)1; /* drop the Thumb bit */
        else if (strncmp(argv[i], "out=", 4) == 0)
            path = argv[i] + 4;
        else if (strncmp(argv[i], "blocks=", 7) == 0)
            blocks_path = argv[i] + 7;
        else if (strncmp(argv[i], "opsout=", 7) == 0)
            ops_path = argv[i] + 7;
        else if (strncmp(argv[i], "ops=", 4) == 0)
            ops = argv[i] + 4;
    }
    for (end = (char *)ops; ops != NULL && *ops != '\0'; ops = end + (*end == ':')) {
        if (nops == MAX_OPS) {
            fprintf(stderr, "qemu_insn_count: more than %d ops\n", MAX_OPS);
            return 1;
        }
        op_addr[nops++] = strtoull(ops, &end, 0) & ~(uint64_t)1;
        if (end == ops) {
            fprintf(stderr, "qemu_insn_count: bad ops= list\n");
            return 1;
        }
    }
    if ((nops > 0) != (ops_path != NULL)) {
        fprintf(stderr, "qemu_insn_count: ops= and opsout= go together\n");
        return 1;
    }
    if (ops_path != NULL && (ops_out = fopen(ops_path, "w")) == NULL) {
        perror(ops_path);
        return 1;
    }
    if (mark_addr == 0 || path == NULL) {
        fprintf(stderr, "qemu_insn_count: need mark=ADDRESS,out=FILE\n");
        return 1;
    }
    if ((out = fopen(path, "w")) == NULL) {
        perror(path);
        return 1;
    }
    if (blocks_path != NULL && (blocks_out = fopen(blocks_path, "w")) == NULL) {
        perror(blocks_path);
        return 1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_quit, NULL);
    return 0;
}
