/* Times SavedModel signatures through TensorFlow's C API, without Python.
 *
 * What TF Serving does per request, minus the network and the protobuf conversion:
 * the SavedModel is loaded on the `serve` tag (TF_LoadSessionFromSavedModel: the
 * loader SavedModelBundle uses), and each call is ONE Session::Run (TF_SessionRun) on
 * the signature's tensor names. `scripts/streaming_latency.py --native` writes the spec
 * and the feeds, compiles this file against the TensorFlow wheel's own headers and
 * libraries, runs it and reads its timings.
 *
 * Spec (text, whitespace separated), read from argv[1]:
 *   models <n> <export_dir_0> ... <export_dir_n-1>
 *   rounds <R>
 *   threads <inter_op> <intra_op>     (the session's thread pools; 0 = TensorFlow's default,
 *                                      as TF Serving's --tensorflow_inter_op_parallelism
 *                                      and --tensorflow_intra_op_parallelism; inter_op -1:
 *                                      every op in the calling thread)
 *   point <label> <model index> <n_feeds> <n_fetches> <burst> <n_rounds> <r_1> ... <r_n>
 *     feed <tensor_name> <f32|i32|i64|str> <ndims> <d_1> ... <d_ndims> <file> <offset>
 *     ... (n_feeds feed lines, then n_fetches lines:)
 *     fetch <tensor_name>
 *   ... (more points)
 * Numeric feeds are raw little-endian values at <offset> of <file>; a string feed's
 * elements are <length as uint32><bytes>, one after the other.
 * Every point runs twice as warm-up (once if that took over 5 s), then in the listed
 * rounds (0-based), the points of a round one after the other (interleaved, so that
 * load changes hit every point and every export alike); in each of its rounds a point
 * runs <burst> calls in a row, each timed (as a server answers a stream of requests of
 * one signature; the first call of a burst follows other exports' calls).
 * Output (stdout): one line per point: `<label> <seconds> <seconds> ...`, the calls in
 * order (n_rounds x burst of them).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tensorflow/c/c_api.h"
#include "tensorflow/core/platform/ctstring.h"

#define MAX_POINTS 64
#define MAX_MODELS 16
#define MAX_TENSORS 64
#define MAX_ROUNDS 10000

typedef struct {
  char label[128];
  int model, n_feeds, n_fetches, burst, n_rounds;
  int *rounds;
  TF_Output feeds[MAX_TENSORS], fetches[MAX_TENSORS];
  TF_Tensor *values[MAX_TENSORS];
  double *times;
  int n_times;
} Point;

static void die(const char *what, const char *detail) {
  fprintf(stderr, "session_run_timer: %s: %s\n", what, detail);
  exit(1);
}

static void check(TF_Status *status, const char *what) {
  if (TF_GetCode(status) != TF_OK) die(what, TF_Message(status));
}

static TF_Output output_by_name(TF_Graph *graph, const char *name) {
  char op[512];
  const char *colon = strrchr(name, ':');
  size_t n = colon ? (size_t)(colon - name) : strlen(name);
  if (n >= sizeof(op)) die("tensor name too long", name);
  memcpy(op, name, n);
  op[n] = '\0';
  TF_Operation *oper = TF_GraphOperationByName(graph, op);
  if (oper == NULL) die("no such operation in the graph", name);
  TF_Output out = {oper, colon ? atoi(colon + 1) : 0};
  return out;
}

static unsigned char *read_file(const char *path, long offset, size_t bytes) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) die("cannot open", path);
  unsigned char *buf = malloc(bytes ? bytes : 1);
  if (fseek(f, offset, SEEK_SET) != 0 || fread(buf, 1, bytes, f) != bytes)
    die("short read", path);
  fclose(f);
  return buf;
}

static TF_Tensor *read_feed(FILE *spec, char *name_out) {
  char dtype[8], path[1024];
  int ndims;
  long offset;
  int64_t dims[8], count = 1;
  if (fscanf(spec, " feed %511s %7s %d", name_out, dtype, &ndims) != 3 || ndims > 8)
    die("bad feed line", name_out);
  for (int i = 0; i < ndims; ++i) {
    long long d;
    if (fscanf(spec, "%lld", &d) != 1) die("bad dimension", name_out);
    dims[i] = d;
    count *= d;
  }
  if (fscanf(spec, "%1023s %ld", path, &offset) != 2) die("bad feed file", name_out);
  if (strcmp(dtype, "str") == 0) {
    TF_Tensor *t = TF_AllocateTensor(TF_STRING, dims, ndims, count * sizeof(TF_TString));
    TF_TString *s = (TF_TString *)TF_TensorData(t);
    FILE *f = fopen(path, "rb");
    if (f == NULL || fseek(f, offset, SEEK_SET) != 0) die("cannot open", path);
    for (int64_t i = 0; i < count; ++i) {
      uint32_t len;
      char buf[4096];
      if (fread(&len, 4, 1, f) != 1 || len > sizeof(buf) || fread(buf, 1, len, f) != len)
        die("short string read", path);
      TF_TString_Init(&s[i]);
      TF_TString_Copy(&s[i], buf, len);
    }
    fclose(f);
    return t;
  }
  TF_DataType type;
  size_t width;
  if (strcmp(dtype, "f32") == 0) { type = TF_FLOAT; width = 4; }
  else if (strcmp(dtype, "i32") == 0) { type = TF_INT32; width = 4; }
  else if (strcmp(dtype, "i64") == 0) { type = TF_INT64; width = 8; }
  else die("unknown dtype", dtype);
  TF_Tensor *t = TF_AllocateTensor(type, dims, ndims, count * width);
  unsigned char *data = read_file(path, offset, count * width);
  memcpy(TF_TensorData(t), data, count * width);
  free(data);
  return t;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double run_once(TF_Session **sessions, Point *p, TF_Status *status) {
  TF_Session *session = sessions[p->model];
  TF_Tensor *outputs[MAX_TENSORS];
  double t0 = now();
  TF_SessionRun(session, NULL, p->feeds, p->values, p->n_feeds, p->fetches, outputs,
                p->n_fetches, NULL, 0, NULL, status);
  double t = now() - t0;
  check(status, p->label);
  for (int i = 0; i < p->n_fetches; ++i) TF_DeleteTensor(outputs[i]);
  return t;
}

int main(int argc, char **argv) {
  if (argc != 2) die("usage", "session_run_timer SPEC");
  FILE *spec = fopen(argv[1], "r");
  if (spec == NULL) die("cannot open", argv[1]);
  char export_dirs[MAX_MODELS][1024], name[512];
  int n_models, rounds;
  if (fscanf(spec, " models %d", &n_models) != 1 || n_models < 1 || n_models > MAX_MODELS)
    die("bad spec header (models)", argv[1]);
  for (int i = 0; i < n_models; ++i)
    if (fscanf(spec, "%1023s", export_dirs[i]) != 1) die("bad model path", argv[1]);
  int inter_op, intra_op;
  if (fscanf(spec, " rounds %d", &rounds) != 1 || rounds < 0 || rounds > MAX_ROUNDS)
    die("bad spec header (rounds)", argv[1]);
  if (fscanf(spec, " threads %d %d", &inter_op, &intra_op) != 2 || inter_op < -1 ||
      intra_op < 0 || inter_op > 127 || intra_op > 127)
    die("bad spec header (threads)", argv[1]);

  TF_Status *status = TF_NewStatus();
  TF_SessionOptions *opts = TF_NewSessionOptions();
  /* A serialized ConfigProto: intra_op_parallelism_threads is field 2, inter_op_ is
   * field 5, both varints (one byte each from 1 to 127; a negative int32 is sign-extended
   * to ten bytes). inter_op -1: every op runs in the calling thread (DirectSession's
   * run_in_caller_thread; TF Serving passes --tensorflow_inter_op_parallelism=-1 on). */
  unsigned char config[16];
  size_t config_len = 0;
  if (intra_op) { config[config_len++] = 0x10; config[config_len++] = (unsigned char)intra_op; }
  if (inter_op > 0) { config[config_len++] = 0x28; config[config_len++] = (unsigned char)inter_op; }
  if (inter_op < 0) {
    config[config_len++] = 0x28;
    for (int i = 0; i < 9; ++i) config[config_len++] = 0xff;
    config[config_len++] = 0x01;
  }
  if (config_len) {
    TF_SetConfig(opts, config, config_len, status);
    check(status, "session config");
  }
  TF_Graph *graphs[MAX_MODELS];
  TF_Session *sessions[MAX_MODELS];
  const char *tags[] = {"serve"};
  for (int i = 0; i < n_models; ++i) {
    graphs[i] = TF_NewGraph();
    sessions[i] = TF_LoadSessionFromSavedModel(opts, NULL, export_dirs[i], tags, 1, graphs[i],
                                               NULL, status);
    check(status, export_dirs[i]);
  }

  static Point points[MAX_POINTS];
  int n_points = 0;
  while (n_points < MAX_POINTS && fscanf(spec, " point %127s", points[n_points].label) == 1) {
    Point *p = &points[n_points++];
    if (fscanf(spec, "%d %d %d %d %d", &p->model, &p->n_feeds, &p->n_fetches, &p->burst,
               &p->n_rounds) != 5
        || p->model < 0 || p->model >= n_models || p->n_feeds > MAX_TENSORS
        || p->n_fetches > MAX_TENSORS || p->burst < 1 || p->burst > MAX_ROUNDS
        || p->n_rounds > rounds)
      die("bad point line", p->label);
    p->rounds = calloc(rounds + 1, sizeof(int));
    for (int i = 0; i < p->n_rounds; ++i) {
      int r;
      if (fscanf(spec, "%d", &r) != 1 || r < 0 || r >= rounds) die("bad round", p->label);
      p->rounds[r] = 1;
    }
    TF_Graph *graph = graphs[p->model];
    for (int i = 0; i < p->n_feeds; ++i) {
      p->values[i] = read_feed(spec, name);
      p->feeds[i] = output_by_name(graph, name);
    }
    for (int i = 0; i < p->n_fetches; ++i) {
      if (fscanf(spec, " fetch %511s", name) != 1) die("bad fetch line", p->label);
      p->fetches[i] = output_by_name(graph, name);
    }
    p->times = calloc((size_t)p->n_rounds * p->burst + 1, sizeof(double));
  }
  if (fscanf(spec, " %*s") != EOF) die("more than 64 points, or a bad line", argv[1]);
  fclose(spec);

  for (int i = 0; i < n_points; ++i)
    if (run_once(sessions, &points[i], status) < 5.0) run_once(sessions, &points[i], status);
  for (int r = 0; r < rounds; ++r)
    for (int i = 0; i < n_points; ++i)
      if (points[i].rounds[r])
        for (int b = 0; b < points[i].burst; ++b)
          points[i].times[points[i].n_times++] = run_once(sessions, &points[i], status);

  for (int i = 0; i < n_points; ++i) {
    printf("%s", points[i].label);
    for (int j = 0; j < points[i].n_times; ++j) printf(" %.9f", points[i].times[j]);
    printf("\n");
  }
  for (int i = 0; i < n_models; ++i) {
    TF_CloseSession(sessions[i], status);
    TF_DeleteSession(sessions[i], status);
    TF_DeleteGraph(graphs[i]);
  }
  TF_DeleteSessionOptions(opts);
  TF_DeleteStatus(status);
  return 0;
}
