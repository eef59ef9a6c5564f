#!/usr/bin/env python3
"""Writes a synthetic PyTorch-profiler-like Chrome trace of about N MB for the ff-trace benchmark.

Shape (like DeepSeek's published profile-data traces): a JSON object with schemaVersion,
deviceProperties for 8 GPUs and traceEvents holding, per training step and GPU, GEMM/attention/
elementwise kernels on a compute stream, NCCL and DeepEP dispatch/combine kernels on two comm streams
(overlapping the compute), and on the host the cpu_op / cuda_runtime events that launched them with
ac2g flow arrows, each with PyTorch-style args. Deterministic for a given --seed.

Usage: gen_trace.py OUT.json --mb 1024 [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random

GPUS = 8
COMPUTE_KERNELS = [
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute_segment_k_off_kernel__5x_cublas",
    "void deep_gemm::fp8_gemm_kernel<128u, 128u, 128u, 4u, 8u, (deep_gemm::GemmType)1>(__nv_bfloat16*, float*, int*)",
    "void flash_fwd_splitkv_mla_kernel<Flash_fwd_kernel_traits_mla<576, 64, 64, 8, cutlass::bfloat16_t, 512>, true>",
    "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, at::detail::Array<char*, 1> >",
    "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, at::native::(anonymous namespace)::SoftMaxForwardEpilogue>",
    "Memcpy DtoD (Device -> Device)",
]
COMM_KERNELS = [
    "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
    "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
    "void deep_ep::internode::dispatch<false, 8, 3, 4, 32, 4, 2>(int4*, float*, int*, long*)",
    "void deep_ep::internode::combine<__nv_bfloat16, 8, 4, 4, 32, 4, 2>(int4*, float*, int const*)",
]
CPU_OPS = ["aten::mm", "aten::addmm", "aten::softmax", "aten::fill_", "c10d::allreduce_", "DeepEP::dispatch"]


def kernel_event(name: str, gpu: int, stream: int, ts: float, dur: float, correlation: int) -> str:
    return (
        f'{{"ph":"X","cat":"kernel","name":{json.dumps(name)},"pid":{gpu},"tid":{stream},'
        f'"ts":{ts:.3f},"dur":{dur:.3f},"args":{{"External id":{correlation + 7},"queued":0,"device":{gpu},'
        f'"context":1,"stream":{stream},"correlation":{correlation},"registers per thread":168,'
        f'"shared memory":213248,"blocks per SM":0.992424,"warps per SM":11.909091,"grid":[132,1,1],'
        f'"block":[384,1,1],"est. achieved occupancy %":19}}}}'
    )


def host_events(op: str, host_pid: int, host_tid: int, ts: float, correlation: int) -> str:
    return (
        f'{{"ph":"X","cat":"cpu_op","name":"{op}","pid":{host_pid},"tid":{host_tid},"ts":{ts:.3f},"dur":9.125,'
        f'"args":{{"External id":{correlation + 7},"Record function id":0,"Ev Idx":{correlation},'
        f'"Input Dims":[[4096,7168],[7168,2048]],"Input type":["c10::BFloat16","c10::BFloat16"],'
        f'"Input Strides":[[7168,1],[1,7168]],"Concrete Inputs":["",""]}}}},\n'
        f'{{"ph":"X","cat":"cuda_runtime","name":"cudaLaunchKernel","pid":{host_pid},"tid":{host_tid},'
        f'"ts":{ts + 2:.3f},"dur":4.5,"args":{{"External id":{correlation + 7},"cbid":211,"correlation":{correlation}}}}},\n'
        f'{{"ph":"s","id":{correlation},"pid":{host_pid},"tid":{host_tid},"ts":{ts + 2:.3f},"cat":"ac2g","name":"ac2g"}}'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--mb", type=float, default=64, help="approximate size in MB (10^6 bytes)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    target_bytes = int(args.mb * 1e6)
    rng = random.Random(args.seed)

    header = {
        "schemaVersion": 1,
        "deviceProperties": [
            {"id": g, "name": "NVIDIA H800", "totalGlobalMem": 85031714816, "computeMajor": 9, "computeMinor": 0,
             "maxThreadsPerBlock": 1024, "numSms": 132, "regsPerBlock": 65536, "sharedMemPerBlock": 49152}
            for g in range(GPUS)
        ],
        "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": GPUS},
    }
    written = 0
    with open(args.out, "w", encoding="utf-8", buffering=1 << 22) as out:
        prefix = json.dumps(header)[:-1] + ',"traceEvents":[\n'
        out.write(prefix)
        written += len(prefix)
        meta = []
        for g in range(GPUS):
            meta.append(f'{{"ph":"M","name":"process_name","pid":{g},"tid":0,"args":{{"name":"GPU {g}"}}}}')
            for stream in (7, 20, 24):
                meta.append(f'{{"ph":"M","name":"thread_name","pid":{g},"tid":{stream},"args":{{"name":"stream {stream}"}}}}')
            meta.append(f'{{"ph":"M","name":"process_name","pid":{1000 + g},"tid":0,"args":{{"name":"python rank {g}"}}}}')
        chunk = ",\n".join(meta)
        out.write(chunk)
        written += len(chunk)
        clock = [5139471567062.484 + 13.0 * g for g in range(GPUS)]
        correlation = 1
        parts: list[str] = []
        while written < target_bytes:
            for g in range(GPUS):
                ts = clock[g]
                # Compute stream: a run of kernels; comm streams: overlapping collectives/all-to-all.
                for _ in range(6):
                    name = COMPUTE_KERNELS[rng.randrange(len(COMPUTE_KERNELS))]
                    dur = rng.uniform(5.0, 400.0)
                    parts.append(kernel_event(name, g, 7, ts, dur, correlation))
                    parts.append(host_events(CPU_OPS[correlation % len(CPU_OPS)], 1000 + g, 1000 + g, ts - 30.0,
                                             correlation))
                    correlation += 1
                    ts += dur + rng.uniform(0.5, 20.0)
                comm_start = clock[g] + rng.uniform(0.0, 300.0)
                for stream in (20, 24):
                    name = COMM_KERNELS[rng.randrange(len(COMM_KERNELS))]
                    dur = rng.uniform(50.0, 900.0)
                    parts.append(kernel_event(name, g, stream, comm_start, dur, correlation))
                    correlation += 1
                    comm_start += dur * 0.5
                clock[g] = max(ts, comm_start) + rng.uniform(1.0, 50.0)
            chunk = ",\n" + ",\n".join(parts)
            parts.clear()
            out.write(chunk)
            written += len(chunk)
        out.write("\n]}\n")
    print(json.dumps({"path": args.out, "bytes": os.path.getsize(args.out)}))


if __name__ == "__main__":
    main()
