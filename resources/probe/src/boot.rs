//! CPL0 part of the probe: everything the CPU needs before the probe drops to CPL3.
//!
//! On the development host guest CPL0 code is emulated (~7 µs per instruction), CPL3 code runs
//! natively, so this is straight-line assembly of about 20 instructions and every table is
//! built by the assembler and linker, never by a loop at run time:
//! - page tables: 0..1 GiB identity mapped with 2 MiB user pages, plus the uncached user page
//!   0xc000_0000..0xc020_0000 (boot timer, virtio-mmio slots). The tables themselves are
//!   user-writable so CPL3 code (`paging.rs`) can map more RAM without coming back here.
//! - GDT (kernel and user 64-bit code/data, TSS), TSS with RSP0 and an I/O permission bitmap
//!   allowing ports 0..0x3ff, IDT for vectors 0..31.
//! - CR0, CR4 (OSFXSR/OSXMMEXCPT for the SSE that Rust emits; no OSXSAVE: XSAVE is not
//!   emulated at CPL0 here), then `iretq` to `probe_user_entry` at CPL3 with IOPL 3.
//!
//! Port I/O at CPL3 is allowed twice over: IOPL 3 in RFLAGS, and the TSS I/O bitmap. The
//! development host's KVM (kvm_pvm) drops IOPL on the `iretq` (CPL3 runs with RFLAGS 0x202,
//! and its CS reads 0x33) but honours the TSS bitmap. Note that IF is 1 at CPL3 there: the
//! probe programs no interrupt source, and a stray interrupt is reported as an exception.
//!
//! The IDT and the TSS descriptor need their handler/base addresses split into bit fields,
//! which the assembler only does for constants: they are written as offsets from `_start`
//! plus `IMAGE_BASE`, and link.ld asserts that `_start` is at `IMAGE_BASE`.
//!
//! Exceptions go to `isr_common`. A `ud2` at a known RIP is a gate from CPL3 into CPL0 (`INT n`
//! from CPL3 arrives as #UD on this host and SYSCALL is half emulated, hence `ud2`): the idle
//! gate (`cli; hlt` loop) and the CPUID gate. Anything else is reported by exception.rs, which
//! powers off.

use core::arch::global_asm;

/// Selectors of the GDT below; `| 3` is the requested privilege level for CPL3.
pub const USER_DATA_SELECTOR: u64 = 0x18 | 3;
pub const USER_CODE_SELECTOR: u64 = 0x20 | 3;
/// RFLAGS for CPL3: IOPL = 3 (port I/O allowed), interrupts off, bit 1 reserved-set.
pub const USER_RFLAGS: u64 = 0x3002;

global_asm!(
    r#"
    .set IMAGE_BASE, 0x200000
    .set KERNEL_CODE, 0x08
    .set KERNEL_DATA, 0x10
    .set TSS_SELECTOR, 0x28
    .set PTE_USER_RW, 0x7            // present | writable | user
    .set PDE_USER_2M, 0x87           // present | writable | user | 2 MiB page
    .set PDE_USER_2M_UC, 0x9f        // ... | write-through | cache-disable
    .set CR0_VALUE, 0x80050033       // PG | AM | WP | NE | ET | MP | PE
    .set CR4_VALUE, 0x620            // OSXMMEXCPT | OSFXSR | PAE
    .set IO_BITMAP_PORTS, 0x400

    .section .boot, "awx"
    .code64
    .globl _start
_start:
    // Long mode, CPL0, interrupts off, RSI = zero page.
    lea rax, [rip + probe_pml4]
    mov cr3, rax
    mov eax, CR4_VALUE
    mov cr4, rax
    mov eax, CR0_VALUE
    mov cr0, rax
    lgdt [rip + gdt_pointer]
    lidt [rip + idt_pointer]
    mov ax, TSS_SELECTOR
    ltr ax
    // iretq to CPL3: SS, RSP, RFLAGS, CS, RIP. RDI carries the zero page to Rust.
    mov rdi, rsi
    push {user_ss}
    lea rax, [rip + probe_user_stack_top]
    push rax
    push {user_rflags}
    push {user_cs}
    lea rax, [rip + probe_user_entry]
    push rax
    iretq

    // CPL3 from here: zero .bss natively, then Rust.
probe_user_entry:
    mov r12, rdi
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    shr rcx, 3
    xor eax, eax
    cld
    rep stosq
    mov rdi, r12
    call probe_main
    ud2

    // Gates from CPL3 into CPL0, called from Rust: the #UD raised by their `ud2` is
    // recognised by its RIP in isr_common. The idle gate halts at CPL0 forever.
    .globl probe_idle_gate
probe_idle_gate:
    ud2

    // Triple fault on purpose: the #UD handler loads an empty IDT and raises #UD again, which
    // escalates to a double fault and then a shutdown (KVM_EXIT_SHUTDOWN).
    .globl probe_triple_fault_gate
probe_triple_fault_gate:
    ud2

    // CPUID at CPL0 (at CPL3 the development host runs CPUID natively and answers with the
    // host's values, not the VMM's). In: EAX leaf, ECX subleaf. Out: EAX, ESI (= EBX), ECX,
    // EDX. RBX is preserved (LLVM reserves it).
    .globl probe_cpuid_gate
probe_cpuid_gate:
    push rbx
cpuid_ud2:
    ud2                              // isr_common runs CPUID and resumes after this ud2
    mov esi, ebx
    pop rbx
    ret

    // Vectors 0..31. Those without a CPU error code push 0 so the frame is uniform:
    // [rsp] vector, [rsp+8] error code, [rsp+16] RIP, CS, RFLAGS, RSP, SS.
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
isr_\n:
    .if (\n == 8) || (\n == 10) || (\n == 11) || (\n == 12) || (\n == 13) || (\n == 14) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
    .else
    push 0
    .endif
    push \n
    jmp isr_common
    .endr

isr_common:
    cmp qword ptr [rsp], 6
    jne 2f
    cmp qword ptr [rsp + 16], offset probe_idle_gate
    je 1f
    cmp qword ptr [rsp + 16], offset probe_triple_fault_gate
    je 3f
    cmp qword ptr [rsp + 16], offset cpuid_ud2
    jne 2f
    cpuid
    add qword ptr [rsp + 16], 2      // past the ud2
    add rsp, 16                      // vector, error code
    iretq
1:
    cli
    hlt
    jmp 1b
3:
    lidt [rip + empty_idtr]
    ud2
2:
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    mov rdx, [rsp + 16]
    mov rcx, cr2
    and rsp, -16
    call probe_exception_report
    jmp 1b

    .balign 16
gdt:
    .quad 0
    .quad 0x00af9b000000ffff         // 0x08 kernel code, 64-bit
    .quad 0x00cf93000000ffff         // 0x10 kernel data
    .quad 0x00cff3000000ffff         // 0x18 user data, DPL 3
    .quad 0x00affb000000ffff         // 0x20 user code, 64-bit, DPL 3
    .short tss_end - tss - 1         // 0x28 available 64-bit TSS
    .short (tss - _start + IMAGE_BASE) & 0xffff
    .byte ((tss - _start + IMAGE_BASE) >> 16) & 0xff
    .byte 0x89
    .byte 0
    .byte ((tss - _start + IMAGE_BASE) >> 24) & 0xff
    .long 0
    .long 0
gdt_end:

    .balign 8
    .short 0, 0, 0
gdt_pointer:
    .short gdt_end - gdt - 1
    .quad gdt
    .short 0, 0, 0
empty_idtr:                          // limit 0: every exception escalates to a shutdown
    .short 0
    .quad 0
    .short 0, 0, 0
idt_pointer:
    .short idt_end - idt - 1
    .quad idt

    .balign 16
tss:
    .long 0
    .quad probe_kernel_stack_top     // RSP0: stack for exceptions from CPL3
    .quad 0, 0, 0                    // RSP1, RSP2, reserved
    .quad 0, 0, 0, 0, 0, 0, 0        // IST1..7
    .quad 0
    .short 0
    .short tss_io_bitmap - tss
tss_io_bitmap:
    .fill IO_BITMAP_PORTS / 8, 1, 0  // ports 0..0x3ff allowed at CPL3
    .byte 0xff                       // required terminator
tss_end:

    .balign 16
idt:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .short (isr_\n - _start + IMAGE_BASE) & 0xffff
    .short KERNEL_CODE
    .short 0x8e00                    // present, DPL 0, 64-bit interrupt gate
    .short ((isr_\n - _start + IMAGE_BASE) >> 16) & 0xffff
    .long 0                          // the image lies below 4 GiB
    .long 0
    .endr
idt_end:

    .balign 4096
    .globl probe_pml4
probe_pml4:
    .quad probe_pdpt0 + PTE_USER_RW
    .fill 511, 8, 0
probe_pdpt0:
    .quad pd_low + PTE_USER_RW       // 0..1 GiB
    .quad 0
    .quad 0
    .quad pd_mmio + PTE_USER_RW      // 3..4 GiB
    .fill 508, 8, 0
pd_low:
    .set page, 0
    .rept 512
    .quad page + PDE_USER_2M
    .set page, page + 0x200000
    .endr
pd_mmio:
    .quad 0xc0000000 + PDE_USER_2M_UC
    .fill 511, 8, 0

    .section .bss.probe_stacks, "aw", @nobits
    .balign 16
    .space 16384
probe_kernel_stack_top:
    .space 65536
    .globl probe_user_stack_top
probe_user_stack_top:
    "#,
    user_ss = const USER_DATA_SELECTOR,
    user_cs = const USER_CODE_SELECTOR,
    user_rflags = const USER_RFLAGS,
);
