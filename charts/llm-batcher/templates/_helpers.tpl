{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "llm-batcher.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release name contains it.
At most 46 characters: the StatefulSet "<fullname>-redis" must stay within 52, or its pods'
controller-revision-hash label ("<name>-<10-character hash>") would pass the 63 allowed. */}}
{{- define "llm-batcher.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llm-batcher.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: (dict "ctx" $ "component" "api"). Only these go into selectors, which are
immutable: a user label here would break every upgrade that changes it. */}}
{{- define "llm-batcher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-batcher.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Labels of every object: (dict "ctx" $ "component" "api"); component may be empty. */}}
{{- define "llm-batcher.labels" -}}
helm.sh/chart: {{ include "llm-batcher.chart" .ctx }}
{{ include "llm-batcher.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: llm-batcher
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "llm-batcher.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-batcher.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: (dict "ctx" $ "image" .Values.api.image), as Bitnami-style charts build it:
[registry/]repository, then @digest when one is set, else :tag (default: appVersion).
global.imageRegistry, set here or by a parent chart, replaces every image's registry. */}}
{{- define "llm-batcher.image" -}}
{{- $registry := .image.registry | default "" }}
{{- with .ctx.Values.global }}{{ with .imageRegistry }}{{ $registry = . }}{{ end }}{{ end }}
{{- $repository := .image.repository }}
{{- if $registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repository .image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.image.tag | default .ctx.Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Redis: the URL (never with a password) and the Secret holding the password, if any. */}}
{{- define "llm-batcher.redisUrl" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s-redis:%d/0" (include "llm-batcher.fullname" .) (int .Values.redis.port) }}
{{- else if (include "llm-batcher.sentinels" .) }}
{{- /* The Sentinels name the master: the URL gives only the database, user and TLS. */}}
{{- .Values.externalRedis.url | default "redis://redis/0" }}
{{- else }}
{{- required "externalRedis.url is required when redis.enabled is false" .Values.externalRedis.url }}
{{- end }}
{{- end }}

{{- define "llm-batcher.redisSecretName" -}}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.enabled }}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis" (include "llm-batcher.fullname" .)) }}
{{- end }}
{{- else }}
{{- .Values.externalRedis.existingSecret }}
{{- end }}
{{- end }}

{{- define "llm-batcher.redisSecretKey" -}}
{{- if .Values.redis.enabled }}
{{- .Values.redis.auth.existingSecretPasswordKey }}
{{- else }}
{{- .Values.externalRedis.existingSecretPasswordKey }}
{{- end }}
{{- end }}

{{/* API keys: the Secret holding them, and the variables that read it. The admin keys may be
missing from an existingSecret. */}}
{{- define "llm-batcher.apiKeysSecretName" -}}
{{- .Values.api.auth.existingSecret | default (printf "%s-api-keys" (include "llm-batcher.fullname" .)) }}
{{- end }}

{{/* (dict "ctx" $ "admin" true): the API's variables; without admin, the test pod's. */}}
{{- define "llm-batcher.apiKeysEnv" -}}
{{- $auth := .ctx.Values.api.auth }}
{{- $secret := include "llm-batcher.apiKeysSecretName" .ctx }}
{{- if $auth.enabled }}
- name: LLMB_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $auth.existingSecretKeysKey }}
{{- if .admin }}
- name: LLMB_ADMIN_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $auth.existingSecretAdminKeysKey }}
      optional: true
{{- end }}
{{- end }}
{{- end }}

{{/* One LLMB_* variable per key of a settings dict: keyPrefix -> LLMB_KEY_PREFIX.
(dict "settings" .Values.config "prefix" "LLMB_"). Whole numbers are printed as integers:
Helm holds numbers as floats, which print as 1e+06 from a million up. */}}
{{- define "llm-batcher.settingsEnv" -}}
{{- range $key, $value := .settings }}
- name: {{ printf "%s%s" $.prefix ($key | snakecase | upper) }}
  {{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}
  value: {{ int64 $value | quote }}
  {{- else }}
  value: {{ $value | toString | quote }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Environment every llm-batcher container shares: Redis, then the common settings.
(dict "ctx" $ "component" "api"|"worker"). */}}
{{- define "llm-batcher.commonEnv" -}}
{{- $ctx := .ctx }}
{{- if include "llm-batcher.redisAcl" $ctx }}
{{- /* The component's own ACL user (redis.acl): its name in the URL, its password in the Secret. */}}
- name: LLMB_REDIS_URL
  value: {{ printf "redis://llmb-%s@%s-redis:%d/0" .component (include "llm-batcher.fullname" $ctx) (int $ctx.Values.redis.port) | quote }}
- name: LLMB_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "llm-batcher.redisSecretName" $ctx }}
      key: {{ .component }}-password
{{- else }}
- name: LLMB_REDIS_URL
  value: {{ include "llm-batcher.redisUrl" $ctx | quote }}
{{- with include "llm-batcher.redisSecretName" $ctx }}
- name: LLMB_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ include "llm-batcher.redisSecretKey" $ctx }}
{{- end }}
{{- end }}
{{- if include "llm-batcher.sentinels" $ctx }}
{{- with $ctx.Values.externalRedis.sentinel }}
- name: LLMB_REDIS_SENTINELS
  value: {{ join "," .hosts | quote }}
- name: LLMB_REDIS_SENTINEL_MASTER
  value: {{ .masterName | quote }}
{{- with .existingSecret }}
- name: LLMB_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $ctx.Values.externalRedis.sentinel.existingSecretPasswordKey }}
{{- end }}
{{- end }}
{{- end }}
{{ include "llm-batcher.settingsEnv" (dict "settings" $ctx.Values.config "prefix" "LLMB_") | trim }}
{{- end }}

{{/* Non-empty when the pods reach an external Redis through Sentinels. */}}
{{- define "llm-batcher.sentinels" -}}
{{- if and (not .Values.redis.enabled) (dig "sentinel" "hosts" list .Values.externalRedis) }}true{{ end }}
{{- end }}

{{/* Non-empty when the chart's Redis gives the API and the workers ACL users of their own. */}}
{{- define "llm-batcher.redisAcl" -}}
{{- if and .Values.redis.enabled .Values.redis.auth.enabled .Values.redis.acl.enabled }}true{{ end }}
{{- end }}

{{/* Pod spec fields the API, worker and test pods share. No service links: Kubernetes would
inject <SERVICE>_PORT=tcp://... variables, and a Service named "llmb" would set LLMB_PORT. */}}
{{- define "llm-batcher.podCommon" -}}
serviceAccountName: {{ include "llm-batcher.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Scheduling fields of a component's values: (dict "values" .Values.api "spread" <labels>).
With no topologySpreadConstraints of the user's, `spread` (selector labels), when given, spreads
the pods over nodes softly: one per node where it can, all on one node where it must. */}}
{{- define "llm-batcher.scheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- else }}
{{- with .spread }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- . | nindent 8 }}
{{- end }}
{{- end }}
{{- end }}

{{/* The user's extra pod parts (dict "values" .Values.worker "part" "..."): "init" gives the
initContainers field, "sidecars" the containers after ours, "volumes" the volumes after ours,
"mounts" the volume mounts after ours (each at the indentation of the list it extends). */}}
{{- define "llm-batcher.podExtras" -}}
{{- $v := .values }}
{{- if eq .part "init" }}
{{- with $v.initContainers }}
initContainers:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- else if eq .part "sidecars" }}
{{- with $v.extraContainers }}{{ toYaml . }}{{ end }}
{{- else if eq .part "volumes" }}
{{- with $v.extraVolumes }}{{ toYaml . }}{{ end }}
{{- else if eq .part "mounts" }}
{{- with $v.extraVolumeMounts }}{{ toYaml . }}{{ end }}
{{- end }}
{{- end }}

{{/* Does the worker run the mock LLM? Then the LLMB_MOCK_* settings apply. */}}
{{- define "llm-batcher.runsMock" -}}
{{- if eq (first (splitList " " (trim .Values.worker.config.llmCommand)) | base) "llm-mock" }}true{{ end }}
{{- end }}

{{/* Name of the container port that serves /metrics: (dict "port" .Values.api.config.metricsPort). */}}
{{- define "llm-batcher.metricsPortName" -}}
{{- if .port }}metrics{{ else }}http{{ end }}
{{- end }}

{{/* Egress of the API and worker pods: Redis and DNS, plus networkPolicy.egress.extraRules. */}}
{{- define "llm-batcher.egressRules" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with .Values.networkPolicy.egress.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if .Values.redis.enabled }}
- ports:
    - port: {{ .Values.redis.port }}
      protocol: TCP
  to:
    - podSelector:
        matchLabels:
          {{- include "llm-batcher.selectorLabels" (dict "ctx" $ "component" "redis") | nindent 10 }}
{{- else if include "llm-batcher.sentinels" . }}
{{- /* The Sentinels' ports, and the port of the servers they name. */}}
{{- $sentinel := .Values.externalRedis.sentinel }}
{{- $ports := list (int $sentinel.redisPort) }}
{{- range $sentinel.hosts }}
{{- $ports = append $ports (last (splitList ":" .) | int) }}
{{- end }}
- ports:
    {{- range ($ports | uniq) }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .Values.networkPolicy.egress.externalRedisTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- else }}
{{- $host := (urlParse .Values.externalRedis.url).host }}
- ports:
    - port: {{ ternary (last (splitList ":" $host)) "6379" (contains ":" $host) | int }}
      protocol: TCP
  {{- with .Values.networkPolicy.egress.externalRedisTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- with .Values.networkPolicy.egress.extraRules }}
{{ toYaml . }}
{{- end }}
{{- end }}


{{/* Checksum of the Secrets the chart generates that a component reads: (dict "ctx" $ "component"
"api"). A pod annotation with it rolls the pods when a password or key changes. Secrets of the
user's (existingSecret) are not the chart's to read: roll the pods after changing one. */}}
{{- define "llm-batcher.secretsChecksum" -}}
{{- $ctx := .ctx }}
{{- $text := include (print $ctx.Template.BasePath "/redis/secret.yaml") $ctx }}
{{- if eq .component "api" }}
{{- $text = print $text (include (print $ctx.Template.BasePath "/api/secret.yaml") $ctx) }}
{{- end }}
{{- $text | sha256sum }}
{{- end }}

{{/* The worker's autoscaler: "keda", "hpa", or empty for none. The HPA reads an External
metric, so it is rendered only where the cluster serves the external metrics API
(prometheus-adapter or KEDA installed): on a bare cluster it would report
FailedGetExternalMetric forever, and the workers stay at replicaCount instead. */}}
{{- define "llm-batcher.workerAutoscaler" -}}
{{- $as := .Values.worker.autoscaling }}
{{- if $as.enabled }}
{{- if not (has $as.mode (list "hpa" "keda")) }}
{{- fail "worker.autoscaling.mode must be hpa or keda" }}
{{- end }}
{{- if eq $as.mode "keda" }}keda
{{- else if .Capabilities.APIVersions.Has "external.metrics.k8s.io/v1beta1" }}hpa
{{- end }}
{{- end }}
{{- end }}
