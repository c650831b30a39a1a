use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
fn main() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (4864, 896), &dev).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
    let x = Tensor::randn(0f32, 1.0, (512, 896), &dev).unwrap();
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let d = q.dequantize(&dev).unwrap();
        let t1 = t.elapsed();
        let y = x.matmul(&d.t().unwrap()).unwrap();
        let _ = y.sum_all().unwrap().to_scalar::<f32>();
        let t2 = t.elapsed();
        let dc = d.contiguous().unwrap();
        let t3 = std::time::Instant::now();
        let y = x.matmul(&dc.t().unwrap().contiguous().unwrap()).unwrap();
        let _ = y.sum_all().unwrap().to_scalar::<f32>();
        let t4 = t3.elapsed();
        let qm = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
        let t5 = std::time::Instant::now();
        let y = qm.forward(&x).unwrap();
        let _ = y.sum_all().unwrap().to_scalar::<f32>();
        let t6 = t5.elapsed();
        let x1 = x.narrow(0, 0, 1).unwrap();
        let t7 = std::time::Instant::now();
        for _ in 0..100 {
            let y = qm.forward(&x1).unwrap();
            let _ = y.sum_all().unwrap().to_scalar::<f32>();
        }
        let t8 = t7.elapsed() / 100;
        println!(
            "dequant {t1:?} gemm(t) {:?} gemm(contig) {t4:?} qmm {t6:?} qmv {t8:?}",
            t2 - t1
        );
    }
}
