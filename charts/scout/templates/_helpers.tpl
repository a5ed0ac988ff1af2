{{/* Names ------------------------------------------------------------------------------------------------- */}}

{{- define "scout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name; components append -<component> (kept under 63 characters with the suffixes used). */}}
{{- define "scout.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 30 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "scout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "scout.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "scout.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels: call with (dict "ctx" $ "component" "cloud-decoder") --------------------------------------------- */}}

{{- define "scout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scout.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "scout.labels" -}}
helm.sh/chart: {{ include "scout.chart" .ctx }}
{{ include "scout.selectorLabels" . }}
app.kubernetes.io/part-of: scout
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Images ------------------------------------------------------------------------------------------------ */}}

{{- define "scout.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "scout.thirdPartyImage" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* Security ---------------------------------------------------------------------------------------------- */}}

{{/* Pod-level: non-root, the image's uid/gid, RuntimeDefault seccomp. Call with (dict "uid" N "gid" N "fsGroup" N). */}}
{{- define "scout.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
fsGroup: {{ .fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level for every container but the shaper: read-only root, no privilege escalation, no capabilities. */}}
{{- define "scout.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Environment ------------------------------------------------------------------------------------------- */}}

{{- define "scout.natsSecretName" -}}
{{- if .Values.nats.enabled -}}
{{- default (printf "%s-nats" (include "scout.fullname" .)) .Values.nats.existingSecret -}}
{{- else -}}
{{- .Values.nats.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "scout.natsPasswordKey" -}}
{{- if .Values.nats.enabled -}}{{ .Values.nats.passwordKey }}{{- else -}}{{ .Values.nats.external.passwordKey }}{{- end -}}
{{- end -}}

{{- define "scout.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s-nats.%s.svc:4222" (include "scout.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "nats.external.url is required when nats.enabled is false" .Values.nats.external.url -}}
{{- end -}}
{{- end -}}

{{- define "scout.redisSecretName" -}}
{{- printf "%s-redis" (include "scout.fullname" .) -}}
{{- end -}}

{{- define "scout.redisHost" -}}
{{- printf "%s-redis.%s.svc" (include "scout.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* The OTLP/HTTP endpoint the roles export to ("" when tracing has nowhere to go). */}}
{{- define "scout.otlpEndpoint" -}}
{{- if .Values.tracing.collector.enabled -}}
{{- printf "http://%s-otel-collector.%s.svc:4318" (include "scout.fullname" .) .Release.Namespace -}}
{{- else if .Values.tracing.jaeger.enabled -}}
{{- printf "http://%s-jaeger.%s.svc:4318" (include "scout.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.tracing.endpoint -}}
{{- end -}}
{{- end -}}

{{/* Environment every Scout container gets: NATS, namespace, limits, tracing, caches. */}}
{{- define "scout.commonEnv" -}}
- name: SCOUT_NATS_URL
  value: {{ include "scout.natsUrl" . | quote }}
{{- if .Values.nats.enabled }}
- name: SCOUT_NATS_USER
  value: {{ .Values.nats.user | quote }}
- name: SCOUT_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "scout.natsSecretName" . }}
      key: {{ include "scout.natsPasswordKey" . }}
{{- else }}
{{- with .Values.nats.external.user }}
- name: SCOUT_NATS_USER
  value: {{ . | quote }}
{{- end }}
{{- if .Values.nats.external.existingSecret }}
- name: SCOUT_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.nats.external.existingSecret }}
      key: {{ .Values.nats.external.passwordKey }}
{{- end }}
{{- end }}
- name: SCOUT_NAMESPACE
  value: {{ .Values.scout.namespace | quote }}
- name: SCOUT_LOG_LEVEL
  value: {{ .Values.scout.logLevel | quote }}
- name: SCOUT_STORE_PREFIX
  value: {{ .Values.scout.storePrefix | quote }}
- name: SCOUT_STORE_TTL_S
  value: {{ .Values.scout.storeTtlS | int64 | quote }}
- name: SCOUT_ACK_WAIT_S
  value: {{ .Values.scout.ackWaitS | quote }}
- name: SCOUT_MAX_DELIVER
  value: {{ .Values.scout.maxDeliver | int64 | quote }}
- name: SCOUT_MAX_MESSAGE_BYTES
  value: {{ .Values.scout.maxMessageBytes | int64 | quote }}
- name: SCOUT_REQUEST_TIMEOUT_S
  value: {{ .Values.scout.requestTimeoutS | quote }}
- name: SCOUT_HTTP_HOST
  value: "0.0.0.0"
- name: SCOUT_CACHE
  value: {{ .Values.modelCache.mountPath | quote }}
- name: HF_HOME
  value: {{ printf "%s/hf" .Values.modelCache.mountPath | quote }}
- name: HF_HUB_OFFLINE
  value: "1"
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: TOKENIZERS_PARALLELISM
  value: "false"
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: SCOUT_INSTANCE_ID
  value: "$(POD_NAME)"
{{- $otlp := include "scout.otlpEndpoint" . }}
{{- if $otlp }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $otlp | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: http/protobuf
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.tracing.samplingRatio | quote }}
- name: OTEL_METRICS_EXPORTER
  value: none
{{- end }}
{{- range $k, $v := .Values.scout.env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end -}}

{{/* SCOUT_CLOUD_STORE_URL for a role: call with (dict "ctx" $ "key" "cloud-store-url"). */}}
{{- define "scout.cloudStoreEnv" -}}
- name: SCOUT_CLOUD_STORE_URL
  valueFrom:
    secretKeyRef:
{{- if .ctx.Values.redis.enabled }}
      name: {{ include "scout.redisSecretName" .ctx }}
      key: {{ .key }}
{{- else }}
      name: {{ required "redis.external.existingSecret is required when redis.enabled is false" .ctx.Values.redis.external.existingSecret }}
      key: {{ .ctx.Values.redis.external.urlKey }}
{{- end }}
{{- end -}}

{{/* A map of extra environment variables as an env list. */}}
{{- define "scout.envMap" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end -}}

{{/* Health probes of a Scout role on its metrics port: call with (dict "port" N "startupSeconds" N). */}}
{{- define "scout.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: 5
  failureThreshold: {{ div .startupSeconds 5 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* Volumes every Scout pod mounts: /tmp and the model cache. */}}
{{- define "scout.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
- name: model-cache
{{- if .Values.modelCache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelCache.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.modelCache.sizeLimit }}
{{- end }}
{{- end -}}

{{- define "scout.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: model-cache
  mountPath: {{ .Values.modelCache.mountPath }}
{{- end -}}

{{/* Resources with an accelerator limit added: call with (dict "resources" R "gpu" G). */}}
{{- define "scout.resources" -}}
{{- $res := deepCopy (default dict .resources) -}}
{{- if .gpu.enabled -}}
{{- $limits := default dict $res.limits -}}
{{- $_ := set $limits .gpu.resource (.gpu.count | int) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* A password kept across upgrades: the existing Secret's value, else the given one, else a random one that starts
     with a letter (NATS parses a configuration value that looks like a number as a number).
     Call with (dict "ctx" $ "secret" NAME "key" KEY "value" V). */}}
{{- define "scout.password" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- if .value -}}
{{- .value -}}
{{- else if and $existing (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- printf "%s%s" (randAlpha 1) (randAlphaNum 31) -}}
{{- end -}}
{{- end -}}

{{/* The edge model the policy sizes transfers with. */}}
{{- define "scout.policyEdgeModel" -}}
{{- if .Values.transportPolicy.edgeModel -}}
{{- .Values.transportPolicy.edgeModel -}}
{{- else if .Values.devices -}}
{{- (first .Values.devices).model -}}
{{- else -}}
{{- .Values.cloudDecoder.model -}}
{{- end -}}
{{- end -}}

{{/* The decoder's torch device. */}}
{{- define "scout.decoderDevice" -}}
{{- if .Values.cloudDecoder.device -}}
{{- .Values.cloudDecoder.device -}}
{{- else if .Values.cloudDecoder.gpu.enabled -}}
cuda
{{- else -}}
cpu
{{- end -}}
{{- end -}}

{{/* The NATS monitoring endpoint KEDA reads the consumer lag from. */}}
{{- define "scout.natsMonitoringEndpoint" -}}
{{- $k := .Values.cloudDecoder.autoscaling.keda -}}
{{- if $k.natsMonitoringEndpoint -}}
{{- $k.natsMonitoringEndpoint -}}
{{- else if .Values.nats.enabled -}}
{{- printf "%s-nats.%s.svc.cluster.local:8222" (include "scout.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- fail "cloudDecoder.autoscaling.keda.natsMonitoringEndpoint is required when nats.enabled is false" -}}
{{- end -}}
{{- end -}}

{{/* The JetStream stream of the decode work queue (scout_runtime.subjects.Subjects.decode_stream). */}}
{{- define "scout.decodeStream" -}}
{{- if .Values.scout.namespace -}}
{{- printf "SCOUT_DECODE_%s" (upper .Values.scout.namespace) -}}
{{- else -}}
SCOUT_DECODE
{{- end -}}
{{- end -}}
