//! Elementary functions for the CPU kernels, written so that loops over slices vectorise
//! (burn's CPU backend calls the C library's scalar `expf`, `tanhf`, `expm1f`).

/// `e^x`, within 2 ulp of `f32::exp` for `x` in `[-87, 88]` and clamped to that range outside it
/// (finite, normal results); NaN stays NaN. Written without branches or calls so that loops over slices vectorise: `x = n ln 2 + r`
/// with `|r| <= ln 2 / 2` (Cody-Waite), `e^r` by its Taylor polynomial of degree 7 (truncation
/// error below 6e-9), `2^n` built in the exponent bits.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    let pow2n = f32::from_bits(((t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23) as u32);
    p * pow2n
}

/// The values of a contiguous f32 flex tensor (after `to_contiguous` of an f32 tensor).
pub(crate) fn values(t: &burn_flex::FlexTensor) -> &[f32] {
    t.as_slice().expect("a contiguous f32 tensor")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        for i in 0..=17_500 {
            let x = -87.0 + i as f32 * 0.01;
            let (got, want) = (exp(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 2.5e-7,
                "exp({x}) = {got}, not {want}"
            );
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(1000.0).is_finite() && exp(1000.0) == exp(88.0));
    }
}
