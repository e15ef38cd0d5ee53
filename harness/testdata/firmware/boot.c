/* Test firmware for the emulated boards of twinflash-harness (qemu-system-arm). Built by the harness with
 * arm-none-eabi-gcc -nostdlib, never committed as a binary. One source, chosen at build time:
 *   -DBOARD_NETDUINOPLUS2 (STM32F405, USART1) or -DBOARD_LM3S6965EVB (Stellaris, UART0)
 *   -DVERSION="\"1.2.3\""   the version the banner prints
 *   -DVARIANT_GOOD          writes <v> into twinflash_running_version, prints "boot version=<v>" and idles
 *   -DVARIANT_HANG          hangs before its banner (twinflash_running_version stays empty)
 *   -DVARIANT_CRASHLOOP     prints its banner, then "crash", then resets itself (SYSRESETREQ), again and again
 *   -DVARIANT_HANG_IF_MARKED as GOOD, but hangs before its banner when the word at MARKER_ADDR (a flash sector no
 *                           image writes) holds MARKER_WORD: a hardware variant the release does not support
 */
#include <stdint.h>

#ifndef VERSION
#error "build with -DVERSION=\"\\\"x.y.z\\\"\""
#endif

#define REG(addr) (*(volatile uint32_t *)(addr))
#define SCB_AIRCR 0xE000ED0Cu

#if defined(BOARD_NETDUINOPLUS2)
/* STM32F405 USART1: SR +0x00 (TXE bit 7), DR +0x04, CR1 +0x0C (UE bit 13, TE bit 3). */
#define UART_BASE 0x40011000u
static void uart_init(void) { REG(UART_BASE + 0x0C) = (1u << 13) | (1u << 3); }
static void uart_putc(char c) {
    while ((REG(UART_BASE + 0x00) & (1u << 7)) == 0) {
    }
    REG(UART_BASE + 0x04) = (uint32_t)(uint8_t)c;
}
#elif defined(BOARD_LM3S6965EVB)
/* Stellaris UART0 (PL011): DR +0x000, FR +0x018 (TXFF bit 5), CTL +0x030 (UARTEN bit 0, TXE bit 8). */
#define UART_BASE 0x4000C000u
static void uart_init(void) { REG(UART_BASE + 0x030) = (1u << 0) | (1u << 8); }
static void uart_putc(char c) {
    while (REG(UART_BASE + 0x018) & (1u << 5)) {
    }
    REG(UART_BASE + 0x000) = (uint32_t)(uint8_t)c;
}
#else
#error "define BOARD_NETDUINOPLUS2 or BOARD_LM3S6965EVB"
#endif

static void uart_puts(const char *s) {
    while (*s) {
        uart_putc(*s++);
    }
}

/* The version that runs, written at boot: what a debugger reads (symbol twinflash_running_version) to see which
 * firmware runs, not only which one was written. In .bss, zeroed first thing at boot as a C runtime would. */
volatile char twinflash_running_version[32];

static void record_version(const char *v) {
    uint32_t i = 0;
    for (; v[i] && i < sizeof twinflash_running_version - 1; i++) {
        twinflash_running_version[i] = v[i];
    }
    twinflash_running_version[i] = 0;
}

static void spin(uint32_t n) {
    for (volatile uint32_t i = 0; i < n; i++) {
    }
}

void reset_handler(void) {
    for (uint32_t i = 0; i < sizeof twinflash_running_version; i++) {
        twinflash_running_version[i] = 0;
    }
    uart_init();
#if defined(VARIANT_HANG)
    for (;;) {
    }
#endif
#if defined(VARIANT_HANG_IF_MARKED)
    if (REG(MARKER_ADDR) == MARKER_WORD) {
        for (;;) {
        }
    }
#endif
    record_version(VERSION);
    uart_puts("boot version=" VERSION "\r\n");
#if defined(VARIANT_CRASHLOOP)
    uart_puts("crash\r\n");
    spin(200000);
    REG(SCB_AIRCR) = 0x05FA0004u; /* VECTKEY | SYSRESETREQ */
#endif
    for (;;) {
        spin(1000000);
    }
}

static void fault_handler(void) {
    uart_puts("fault\r\n");
    REG(SCB_AIRCR) = 0x05FA0004u;
    for (;;) {
    }
}

extern uint32_t __stack_top;

__attribute__((section(".vectors"), used)) static const void *const vectors[16] = {
    &__stack_top,   reset_handler, fault_handler, fault_handler, fault_handler, fault_handler,
    fault_handler,  0,             0,             0,             0,             0,
    0,              0,             0,             0,
};
