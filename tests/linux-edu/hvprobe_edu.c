// SPDX-License-Identifier: GPL-2.0
/*
 * hvprobe_edu: a small driver for hvprobe's "edu" PCI device (1234:11e8, in the
 * spirit of QEMU's edu). At probe it runs the device's whole protocol once and
 * prints each result: identification, liveness check, factorial, interrupt
 * raise/acknowledge and a 16-byte DMA round trip through a coherent buffer.
 * The last line is "hvprobe_edu: all checks passed" or "hvprobe_edu: FAILED".
 */
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/module.h>
#include <linux/pci.h>

#define EDU_ID			0x00
#define EDU_LIVENESS		0x04
#define EDU_FACTORIAL		0x08
#define EDU_STATUS		0x20
#define EDU_IRQ_STATUS		0x24
#define EDU_IRQ_RAISE		0x60
#define EDU_IRQ_ACK		0x64
#define EDU_DMA_SRC		0x80
#define EDU_DMA_DST		0x88
#define EDU_DMA_COUNT		0x90
#define EDU_DMA_CMD		0x98

#define EDU_ID_VALUE		0x010000ed
#define EDU_STATUS_COMPUTING	0x01
#define EDU_DMA_START		0x1
#define EDU_DMA_TO_RAM		0x2
#define EDU_DMA_BUFFER		0x40000
#define EDU_MAX_POLLS		1000

struct edu {
	struct pci_dev *pdev;
	void __iomem *regs;
	int irq;		/* 0: no interrupt, poll */
	atomic_t irqs;
	struct completion irq_done;
};

static irqreturn_t edu_irq(int irq, void *data)
{
	struct edu *edu = data;
	u32 status = ioread32(edu->regs + EDU_IRQ_STATUS);

	if (!status)
		return IRQ_NONE;
	iowrite32(status, edu->regs + EDU_IRQ_ACK);
	atomic_inc(&edu->irqs);
	complete(&edu->irq_done);
	return IRQ_HANDLED;
}

static bool edu_check(const char *what, u64 got, u64 want)
{
	if (got == want)
		pr_info("hvprobe_edu: %s = 0x%llx, ok\n", what, got);
	else
		pr_info("hvprobe_edu: %s = 0x%llx, expected 0x%llx: FAILED\n",
			what, got, want);
	return got == want;
}

static bool edu_factorial(struct edu *edu)
{
	unsigned int polls = 0;

	iowrite32(5, edu->regs + EDU_FACTORIAL);
	while (ioread32(edu->regs + EDU_STATUS) & EDU_STATUS_COMPUTING) {
		if (++polls >= EDU_MAX_POLLS) {
			pr_info("hvprobe_edu: factorial still computing: FAILED\n");
			return false;
		}
		udelay(1);
	}
	pr_info("hvprobe_edu: factorial done after %u status polls\n", polls + 1);
	return edu_check("factorial(5)", ioread32(edu->regs + EDU_FACTORIAL), 120);
}

static bool edu_interrupt(struct edu *edu)
{
	u32 status;

	reinit_completion(&edu->irq_done);
	iowrite32(0x1, edu->regs + EDU_IRQ_RAISE);
	if (edu->irq &&
	    wait_for_completion_timeout(&edu->irq_done, msecs_to_jiffies(1000))) {
		pr_info("hvprobe_edu: interrupt received on irq %d (%d so far)\n",
			edu->irq, atomic_read(&edu->irqs));
	} else {
		/* no interrupt routed or delivered: poll and acknowledge */
		status = ioread32(edu->regs + EDU_IRQ_STATUS);
		if (!edu_check("irq status (polled)", status, 0x1))
			return false;
		iowrite32(status, edu->regs + EDU_IRQ_ACK);
		pr_info("hvprobe_edu: interrupt polled and acknowledged\n");
	}
	return edu_check("irq status after ack",
			 ioread32(edu->regs + EDU_IRQ_STATUS), 0);
}

static bool edu_dma_run(struct edu *edu, u64 src, u64 dst, u64 cmd)
{
	unsigned int polls;

	writeq(src, edu->regs + EDU_DMA_SRC);
	writeq(dst, edu->regs + EDU_DMA_DST);
	writeq(16, edu->regs + EDU_DMA_COUNT);
	writeq(cmd | EDU_DMA_START, edu->regs + EDU_DMA_CMD);
	for (polls = 0; polls < EDU_MAX_POLLS; polls++) {
		if (!(readq(edu->regs + EDU_DMA_CMD) & EDU_DMA_START))
			return true;
		udelay(1);
	}
	pr_info("hvprobe_edu: DMA did not finish: FAILED\n");
	return false;
}

static bool edu_dma(struct edu *edu)
{
	static const char data[16] = "hvprobe edu DMA!";
	struct device *dev = &edu->pdev->dev;
	dma_addr_t dma;
	u8 *buf;
	bool ok;

	buf = dma_alloc_coherent(dev, PAGE_SIZE, &dma, GFP_KERNEL);
	if (!buf) {
		pr_info("hvprobe_edu: no DMA buffer: FAILED\n");
		return false;
	}
	memcpy(buf, data, sizeof(data));
	memset(buf + 2048, 0, sizeof(data));
	ok = edu_dma_run(edu, dma, EDU_DMA_BUFFER, 0) &&
	     edu_dma_run(edu, EDU_DMA_BUFFER, dma + 2048, EDU_DMA_TO_RAM);
	if (ok)
		ok = !memcmp(buf + 2048, data, sizeof(data));
	pr_info("hvprobe_edu: DMA of 16 bytes via %pad: \"%.16s\", %s\n",
		&dma, buf + 2048, ok ? "ok" : "FAILED");
	dma_free_coherent(dev, PAGE_SIZE, buf, dma);
	return ok;
}

static int edu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct edu *edu;
	bool ok;
	int err;

	edu = devm_kzalloc(&pdev->dev, sizeof(*edu), GFP_KERNEL);
	if (!edu)
		return -ENOMEM;
	edu->pdev = pdev;
	init_completion(&edu->irq_done);
	err = pci_enable_device(pdev);
	if (err)
		return err;
	err = pci_request_regions(pdev, "hvprobe_edu");
	if (err)
		goto err_disable;
	edu->regs = pci_iomap(pdev, 0, 0);
	if (!edu->regs) {
		err = -ENOMEM;
		goto err_release;
	}
	pci_set_master(pdev);
	err = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (err)
		goto err_unmap;
	pr_info("hvprobe_edu: %s: BAR0 %pR, irq %d\n", pci_name(pdev),
		&pdev->resource[0], pdev->irq);
	if (pdev->irq && !request_irq(pdev->irq, edu_irq, IRQF_SHARED,
				      "hvprobe_edu", edu))
		edu->irq = pdev->irq;
	else
		pr_info("hvprobe_edu: no interrupt, polling\n");
	pci_set_drvdata(pdev, edu);

	ok = edu_check("id", ioread32(edu->regs + EDU_ID), EDU_ID_VALUE);
	iowrite32(0x12345678, edu->regs + EDU_LIVENESS);
	ok &= edu_check("liveness", ioread32(edu->regs + EDU_LIVENESS),
			0xedcba987);
	ok &= edu_factorial(edu);
	ok &= edu_interrupt(edu);
	ok &= edu_dma(edu);
	if (ok) {
		pr_info("hvprobe_edu: all checks passed\n");
		return 0;
	}
	pr_info("hvprobe_edu: FAILED\n");
	err = -EIO;
	if (edu->irq)
		free_irq(edu->irq, edu);
err_unmap:
	pci_iounmap(pdev, edu->regs);
err_release:
	pci_release_regions(pdev);
err_disable:
	pci_disable_device(pdev);
	return err;
}

static void edu_remove(struct pci_dev *pdev)
{
	struct edu *edu = pci_get_drvdata(pdev);

	if (edu->irq)
		free_irq(edu->irq, edu);
	pci_iounmap(pdev, edu->regs);
	pci_release_regions(pdev);
	pci_disable_device(pdev);
	pr_info("hvprobe_edu: %s: removed (%d interrupts)\n", pci_name(pdev),
		atomic_read(&edu->irqs));
}

static const struct pci_device_id edu_ids[] = {
	{ PCI_DEVICE(0x1234, 0x11e8) },
	{ }
};
MODULE_DEVICE_TABLE(pci, edu_ids);

static struct pci_driver edu_driver = {
	.name		= "hvprobe_edu",
	.id_table	= edu_ids,
	.probe		= edu_probe,
	.remove		= edu_remove,
};
module_pci_driver(edu_driver);

MODULE_DESCRIPTION("Driver for hvprobe's edu PCI device");
MODULE_LICENSE("GPL");
