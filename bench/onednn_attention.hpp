// oneDNN's materialized attention for one head, shared by bench_attention.cpp (one head) and
// bench_multi_head_attention.cpp (a loop over heads): matmul Q K^T with the scale as output scale
// (and an optional additive Lq x Lk mask as a binary-add post-op, for causal attention), softmax_v2
// (accurate) in place on S, matmul S V. Q, K, V and O are row-major with leading dimensions, so a
// head can be a column block of a matrix holding every head; S is Lq x Lk, contiguous.
// Only in SOFTMAXLAB_BENCH_ONEDNN builds (oneDNN 2.x API: output scales).
#pragma once

#if SOFTMAXLAB_BENCH_ONEDNN
#include <string>
#include <unordered_map>

#include <Eigen/Core>

#include <oneapi/dnnl/dnnl.hpp>

namespace softmaxlab_bench {

struct OneDnnAttention {
  using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  dnnl::matmul qk, pv;
  dnnl::softmax_v2_forward softmax;
  std::unordered_map<int, dnnl::memory> qk_args, softmax_args, pv_args;
  double scratchpad_bytes = 0;
  std::string impl_info;

  // One head on whole row-major matrices: Q Lq x d, K Lk x d, V Lk x dv, S Lq x Lk, O Lq x dv.
  OneDnnAttention(RowMajorF& q, RowMajorF& k, RowMajorF& v, RowMajorF& s, RowMajorF& o, float scale)
      : OneDnnAttention(q.data(), q.rows(), q.cols(), q.outerStride(), k.data(), k.rows(),
                        k.outerStride(), v.data(), v.cols(), v.outerStride(), s.data(), o.data(),
                        o.outerStride(), scale, nullptr) {}

  // Row-major blocks given by pointer and leading dimension (elements between rows); mask, when
  // not null, Lq x Lk contiguous, added to the scaled scores (-inf hides a key).
  OneDnnAttention(float* q, Eigen::Index lq, Eigen::Index d, Eigen::Index ldq, float* k,
                  Eigen::Index lk, Eigen::Index ldk, float* v, Eigen::Index dv, Eigen::Index ldv,
                  float* s, float* o, Eigen::Index ldo, float scale, float* mask) {
    using dims = dnnl::memory::dims;
    const auto f32 = dnnl::memory::data_type::f32;
    const dnnl::memory::desc q_md(dims{lq, d}, f32, dims{ldq, 1}),
        kt_md(dims{d, lk}, f32, dims{1, ldk}), s_md(dims{lq, lk}, f32, dims{lk, 1}),
        v_md(dims{lk, dv}, f32, dims{ldv, 1}), o_md(dims{lq, dv}, f32, dims{ldo, 1});
    dnnl::primitive_attr scaled;
    scaled.set_output_scales(0, {scale});
    if (mask != nullptr) {
      dnnl::post_ops ops;
      ops.append_binary(dnnl::algorithm::binary_add, s_md);
      scaled.set_post_ops(ops);
    }
    const dnnl::matmul::primitive_desc qk_pd(dnnl::matmul::desc(q_md, kt_md, s_md), scaled, engine);
    const dnnl::softmax_v2_forward::primitive_desc sm_pd(
        dnnl::softmax_v2_forward::desc(dnnl::prop_kind::forward_inference,
                                       dnnl::algorithm::softmax_accurate, s_md, s_md, 1),
        engine);
    const dnnl::matmul::primitive_desc pv_pd(dnnl::matmul::desc(s_md, v_md, o_md), engine);
    qk = dnnl::matmul(qk_pd);
    softmax = dnnl::softmax_v2_forward(sm_pd);
    pv = dnnl::matmul(pv_pd);
    scratchpad_bytes = double(qk_pd.scratchpad_desc().get_size())
                       + double(sm_pd.scratchpad_desc().get_size())
                       + double(pv_pd.scratchpad_desc().get_size());
    impl_info = std::string(qk_pd.impl_info_str()) + " / " + sm_pd.impl_info_str() + " / "
                + pv_pd.impl_info_str();
    const dnnl::memory qm(q_md, engine, q), km(kt_md, engine, k), sm(s_md, engine, s),
        vm(v_md, engine, v), om(o_md, engine, o);
    qk_args = {{DNNL_ARG_SRC, qm}, {DNNL_ARG_WEIGHTS, km}, {DNNL_ARG_DST, sm}};
    if (mask != nullptr)
      qk_args.insert(
          {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, dnnl::memory(s_md, engine, mask)});
    softmax_args = {{DNNL_ARG_SRC, sm}, {DNNL_ARG_DST, sm}};
    pv_args = {{DNNL_ARG_SRC, sm}, {DNNL_ARG_WEIGHTS, vm}, {DNNL_ARG_DST, om}};
  }
  void operator()() {
    qk.execute(stream, qk_args);
    softmax.execute(stream, softmax_args);
    pv.execute(stream, pv_args);
    stream.wait();
  }
};

}  // namespace softmaxlab_bench
#endif
