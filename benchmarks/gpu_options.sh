# The options benchmarks/gpu_check.sh and benchmarks/gpu_search.sh take after their positional arguments,
# sourced by both. parse_options "$@" sets smoke (--smoke) and budget (--budget SECONDS), keeping the
# caller's default budget, then checks that $data holds MNIST/raw/; on bad input, one error line (with the
# caller's $usage) and exit status 2.
parse_options() {
    smoke=false
    while (( $# )); do
        case $1 in
            --smoke) smoke=true ;;
            --budget) [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "error: --budget takes a number of seconds" >&2; exit 2; }
                      budget=$2; shift ;;
            *) echo "error: unknown argument $1; $usage" >&2; exit 2 ;;
        esac
        shift
    done
    [[ -d $data/MNIST/raw ]] || { echo "error: $data/MNIST/raw not found: DATA_DIR must hold MNIST/raw/" >&2; exit 2; }
}
