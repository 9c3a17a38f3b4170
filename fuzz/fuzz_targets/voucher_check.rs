#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::voucher_check::do_test(data));
