//! The vendored candle-core's one patch (vendor/candle-core/FOUNDRY-PATCH.md): a first gradient
//! is stored as is instead of being added to zeros. These check that gradients keep their
//! values where a tensor has one consumer, several, a broadcast, a gather and a reshape.

use candle_core::{Device, Tensor, Var};

fn grad_of(x: &Var, f: impl Fn(&Tensor) -> Tensor) -> Vec<f32> {
    let g = f(x.as_tensor()).backward().unwrap();
    g.get(x.as_tensor())
        .expect("no gradient")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn gradients_keep_their_values() {
    let x = Var::from_tensor(
        &Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap(),
    )
    .unwrap();
    // One consumer: d/dx sum(x²) = 2x.
    assert_eq!(
        grad_of(&x, |x| x.sqr().unwrap().sum_all().unwrap()),
        vec![0., 2., 4., 6., 8., 10.]
    );
    // Three consumers of x (x·x + x): 2x + 1, the first gradient stored, the others added.
    assert_eq!(
        grad_of(&x, |x| ((x * x).unwrap() + x).unwrap().sum_all().unwrap()),
        vec![1., 3., 5., 7., 9., 11.]
    );
    // A broadcast gradient (sum_all's) reaching a gather, which needs it contiguous.
    let idx = Tensor::new(&[[2u32], [0]], &Device::Cpu).unwrap();
    assert_eq!(
        grad_of(&x, |x| x.gather(&idx, 1).unwrap().sum_all().unwrap()),
        vec![0., 0., 1., 1., 0., 0.]
    );
    // Through a reshape and a broadcast add of a row: the row's gradient sums the column.
    let row = Var::from_tensor(&Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap()).unwrap();
    let g = (x
        .as_tensor()
        .reshape((3, 2))
        .unwrap()
        .reshape((2, 3))
        .unwrap())
    .broadcast_add(row.as_tensor())
    .unwrap()
    .sum_all()
    .unwrap()
    .backward()
    .unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(g.get(row.as_tensor()).unwrap()), vec![2., 2., 2.]);
    assert_eq!(flat(g.get(x.as_tensor()).unwrap()), vec![1.; 6]);
}
