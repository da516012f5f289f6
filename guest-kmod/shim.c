// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * hvprobe_guest: the C half of hvprobe's guest module (the Rust half is rust/src/lib.rs).
 *
 * A PCI driver for hvprobe's own device (vendor 0x1234, device 0x4856; see
 * vmm/src/devices/kmod.rs). On a VM without hvprobe there is no such device and the module
 * does nothing. When the device binds, the module reports its trampoline arena (a code
 * region in its own image, which the kernel maps executable within +/-2 GiB of kernel text,
 * and a data region for the probe doorbell and the per-CPU rings) and answers hvprobe's
 * quiescence barrier requests (an interrupt) with synchronize_rcu_tasks(). On rmmod it asks
 * hvprobe to turn every jump into the arena back into an int3, then waits for a barrier
 * before its memory goes.
 *
 * Kernel APIs are called only from here; the Rust code gets the mapped registers.
 */
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/interrupt.h>
#include <linux/workqueue.h>
#include <linux/rcupdate.h>
#include <linux/rcupdate_trace.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/uaccess.h>
#include <linux/mutex.h>

#define HVK_VENDOR 0x1234
#define HVK_DEVICE 0x4856
#define HVK_CODE_SIZE (64 * 1024)
#define HVK_DATA_SIZE (1024 * 1024)

/* The Rust half (rust/src/lib.rs). */
extern int hvk_attach(void __iomem *regs, u64 code, u64 code_len, u64 data, u64 data_len,
		      u64 handler);
extern void hvk_handler(void);
extern void hvk_release(void __iomem *regs);
extern u32 hvk_irq(void __iomem *regs);
extern u32 hvk_barrier_wanted(void __iomem *regs);
extern void hvk_barrier_done(void __iomem *regs, u32 seq);
extern void hvk_mark(void __iomem *regs, const u8 *text, size_t len, int last);

/*
 * The arena's code region: executable (the module loader maps SHF_EXECINSTR sections
 * read-only + executable in module space, near kernel text); hvprobe writes trampolines into
 * it through guest-physical memory. Filled with int3 so nothing runs there by accident.
 */
asm(".pushsection .text.hvprobe_arena,\"ax\",@progbits\n"
    ".balign 4096\n"
    "hvk_arena_code:\n"
    ".fill " __stringify(HVK_CODE_SIZE) ",1,0xcc\n"
    ".popsection\n");
extern u8 hvk_arena_code[];

/* The data region: header, doorbell page, rings, lost counters (read-write, not executable). */
static u8 hvk_arena_data[HVK_DATA_SIZE] __aligned(PAGE_SIZE);

static const char *const hvk_status_text[] = {
	"arena in use", "not hvprobe's device", "protocol version mismatch",
	"hvprobe takes no arena", "hvprobe refused the arena",
};

struct hvk {
	struct pci_dev *pdev;
	void __iomem *regs;
	int irq;
	struct work_struct barrier;
};

/*
 * /dev/hvprobe_mark: each write(2) becomes MARK lines in hvprobe's event stream (a line per
 * '\n'; a write that does not end in one is ended by the module), like mmiotrace's marker
 * file. There while the device is bound (one hvprobe device per VM).
 */
static struct hvk *hvk_marks_dev;
static DEFINE_MUTEX(hvk_marks_lock);

static ssize_t hvk_mark_write(struct file *file, const char __user *buf, size_t len,
			      loff_t *ppos)
{
	u8 chunk[128];
	size_t done = 0;

	if (len > 4096)
		len = 4096;
	mutex_lock(&hvk_marks_lock);
	if (!hvk_marks_dev) {
		mutex_unlock(&hvk_marks_lock);
		return -ENODEV;
	}
	while (done < len) {
		size_t n = min(len - done, sizeof(chunk));

		if (copy_from_user(chunk, buf + done, n)) {
			mutex_unlock(&hvk_marks_lock);
			return done ? done : -EFAULT;
		}
		done += n;
		hvk_mark(hvk_marks_dev->regs, chunk, n, done == len);
	}
	mutex_unlock(&hvk_marks_lock);
	return len;
}

static const struct file_operations hvk_mark_fops = {
	.owner = THIS_MODULE,
	.write = hvk_mark_write,
	.llseek = noop_llseek,
};

static struct miscdevice hvk_mark_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "hvprobe_mark",
	.fops = &hvk_mark_fops,
	.mode = 0222,
};

static void hvk_barrier_work(struct work_struct *work)
{
	struct hvk *h = container_of(work, struct hvk, barrier);
	u32 seq = hvk_barrier_wanted(h->regs);

	synchronize_rcu_tasks();
	hvk_barrier_done(h->regs, seq);
	pr_info("hvprobe_guest: barrier %u done\n", seq);
}

/* For the Rust handler (rust/src/lib.rs, hvk_handler), which hvprobe's trampolines call. */
void hvk_current(u64 *pid, char *comm)
{
	*pid = (u64)task_tgid_nr(current) << 32 | (u32)task_pid_nr(current);
	memcpy(comm, current->comm, TASK_COMM_LEN);
}

long hvk_copy_nofault(void *dst, u64 src, size_t len)
{
	if (src < TASK_SIZE_MAX)
		return copy_from_user_nofault(dst, (const void __user *)(unsigned long)src, len);
	return copy_from_kernel_nofault(dst, (const void *)(unsigned long)src, len);
}

u32 hvk_cpu(void)
{
	return raw_smp_processor_id();
}

static irqreturn_t hvk_interrupt(int irq, void *data)
{
	struct hvk *h = data;
	u32 causes = hvk_irq(h->regs);

	if (!causes)
		return IRQ_NONE;
	if (causes & 1)
		schedule_work(&h->barrier);
	return IRQ_HANDLED;
}

static int hvk_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct hvk *h;
	int err, st;

	h = devm_kzalloc(&pdev->dev, sizeof(*h), GFP_KERNEL);
	if (!h)
		return -ENOMEM;
	h->pdev = pdev;
	INIT_WORK(&h->barrier, hvk_barrier_work);
	err = pci_enable_device(pdev);
	if (err)
		return err;
	err = pci_request_regions(pdev, "hvprobe_guest");
	if (err)
		goto disable;
	h->regs = pci_iomap(pdev, 0, 0);
	if (!h->regs) {
		err = -ENOMEM;
		goto release;
	}
	pci_set_drvdata(pdev, h);
	if (pdev->irq && !request_irq(pdev->irq, hvk_interrupt, IRQF_SHARED,
				      "hvprobe_guest", h))
		h->irq = pdev->irq;
	st = hvk_attach(h->regs, (u64)(unsigned long)hvk_arena_code, HVK_CODE_SIZE,
			(u64)(unsigned long)hvk_arena_data, HVK_DATA_SIZE,
			(u64)(unsigned long)hvk_handler);
	if (st < 0 || st >= ARRAY_SIZE(hvk_status_text))
		st = 4;
	pr_info("hvprobe_guest: %s: irq %d, arena code %px (%u KiB), data %px (%u KiB): %s\n",
		pci_name(pdev), h->irq, hvk_arena_code, HVK_CODE_SIZE / 1024,
		hvk_arena_data, HVK_DATA_SIZE / 1024, hvk_status_text[st]);
	if (st == 1 || st == 2) {
		err = -ENODEV;
		goto unmap;
	}
	mutex_lock(&hvk_marks_lock);
	if (!hvk_marks_dev && !misc_register(&hvk_mark_misc))
		hvk_marks_dev = h;
	mutex_unlock(&hvk_marks_lock);
	return 0;
unmap:
	if (h->irq)
		free_irq(h->irq, h);
	pci_iounmap(pdev, h->regs);
release:
	pci_release_regions(pdev);
disable:
	pci_disable_device(pdev);
	return err;
}

static void hvk_remove(struct pci_dev *pdev)
{
	struct hvk *h = pci_get_drvdata(pdev);

	mutex_lock(&hvk_marks_lock);
	if (hvk_marks_dev == h) {
		misc_deregister(&hvk_mark_misc);
		hvk_marks_dev = NULL;
	}
	mutex_unlock(&hvk_marks_lock);
	/* Every jump into the arena is an int3 again when this returns. */
	hvk_release(h->regs);
	if (h->irq)
		free_irq(h->irq, h);
	cancel_work_sync(&h->barrier);
	/* No task is left inside a trampoline (preempted there) once this returns. */
	synchronize_rcu_tasks();
	pr_info("hvprobe_guest: %s: arena released\n", pci_name(pdev));
	pci_iounmap(pdev, h->regs);
	pci_release_regions(pdev);
	pci_disable_device(pdev);
}

static const struct pci_device_id hvk_ids[] = {
	{ PCI_DEVICE(HVK_VENDOR, HVK_DEVICE) },
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, hvk_ids);

static struct pci_driver hvk_driver = {
	.name = "hvprobe_guest",
	.id_table = hvk_ids,
	.probe = hvk_probe,
	.remove = hvk_remove,
};
module_pci_driver(hvk_driver);

MODULE_DESCRIPTION("hvprobe guest module: trampoline arena and quiescence barrier for hvprobe");
MODULE_AUTHOR("hvprobe developers");
MODULE_LICENSE("Dual MIT/GPL");
