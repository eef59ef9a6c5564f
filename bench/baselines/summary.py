"""One line per case of a bench_anchors.py JSON (bench/results/anchors_<device>.json): ours, the anchor, the ratio.

  python3 bench/baselines/summary.py bench/results/anchors_h200.json
"""
import json, sys
d = json.load(open(sys.argv[1]))
for r in d['cases']:
    g = lambda n: r.get(n, {}).get('us') if isinstance(r.get(n), dict) else None
    if r['part'] == 'mla':
        print('mla', r['s_q'], r['h_q'], r['mean_len'], r['lengths'][:3], g('ours'), g('ours_wgmma'), g('flash_mla'), g('ours_fp8'), g('ours_fp8_wgmma'), r.get('ratio_vs_flash_mla'), r.get('ratio_wgmma_vs_flash_mla'), '%.1e' % r['cos_diff_ours_vs_flash_mla'], r.get('kernel_ours'), r.get('kernel_ours_fp8'))
    elif r['part'] == 'gemm':
        print('gemm', r['case'], r.get('groups', 1), r.get('m', r.get('m_per_group')), r['n'], r['k'], r['ours']['TFLOPS'], r['deep_gemm']['TFLOPS'], r['ratio_vs_deep_gemm'], r['calc_diff_ours_vs_deep_gemm'])
    else:
        print(r['part'], {k: v for k, v in r.items() if k not in ('part',)})
