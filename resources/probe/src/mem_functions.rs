//! memcpy, memmove, memset, memcmp and bcmp, which the compiler calls and no libc provides
//! here. Volatile byte accesses keep the loops from being turned back into calls to these very
//! functions; they run at CPL3 only, natively.

fn load(ptr: *const u8, index: usize) -> u8 {
    // SAFETY: only called by the functions below, whose callers guarantee `ptr` is valid for
    // more than `index` bytes.
    unsafe { ptr.wrapping_add(index).read_volatile() }
}

fn store(ptr: *mut u8, index: usize, value: u8) {
    // SAFETY: as in load.
    unsafe { ptr.wrapping_add(index).write_volatile(value) }
}

/// # Safety
/// `dest` and `src` are valid for `n` bytes and do not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: memmove's contract is weaker than memcpy's.
    unsafe { memmove(dest, src, n) }
}

/// # Safety
/// `dest` and `src` are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) {
        for i in 0..n {
            store(dest, i, load(src, i));
        }
    } else {
        for i in (0..n).rev() {
            store(dest, i, load(src, i));
        }
    }
    dest
}

/// # Safety
/// `dest` is valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        store(dest, i, value as u8);
    }
    dest
}

/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        let (x, y) = (load(a, i), load(b, i));
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
