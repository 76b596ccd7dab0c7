{{/* Chart name, overridable. */}}
{{- define "iam-key-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<name>, or the release name when it already contains the name. */}}
{{- define "iam-key-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "iam-key-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "iam-key-exporter.labels" -}}
helm.sh/chart: {{ include "iam-key-exporter.chart" . }}
{{ include "iam-key-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: iam-key-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: stable across upgrades (no chart or app version). */}}
{{- define "iam-key-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iam-key-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "iam-key-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "iam-key-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "iam-key-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True when the Prometheus Operator API may be used. */}}
{{- define "iam-key-exporter.monitoringApi" -}}
{{- if or .Values.forceMonitoringCRDs (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}true{{ end }}
{{- end }}

{{/* The config file the exporter reads. With a queue per shard, each pod reads the file
     named after itself (the kubelet expands $(POD_NAME) in args): <name>-<i>.yaml. */}}
{{- define "iam-key-exporter.configPath" -}}
/etc/iam-key-exporter/{{ if include "iam-key-exporter.queuePerShard" . }}$(POD_NAME).yaml{{ else }}config.yaml{{ end }}
{{- end }}
{{- define "iam-key-exporter.containerPort" -}}9877{{- end }}

{{/* The exporter config document, as stored in the ConfigMap. */}}
{{- define "iam-key-exporter.config" -}}
{{- include "iam-key-exporter.configWithQueue" (dict "Values" .Values "queueUrl" .Values.events.queueUrl) }}
{{- end }}

{{/* .Values.config with events.queue_url set to .queueUrl (when not empty). */}}
{{- define "iam-key-exporter.configWithQueue" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- with .queueUrl }}
{{- $events := deepCopy (get $cfg "events" | default dict) }}
{{- if get $events "queue_url" }}
{{- fail "config.events.queue_url: set the queue with events.queueUrl (or events.queueUrls when sharded), not in config" }}
{{- end }}
{{- $_ := set $events "queue_url" . }}
{{- $_ := set $cfg "events" $events }}
{{- end }}
{{- if $cfg }}
{{- toYaml $cfg }}
{{- else -}}
{}
{{- end }}
{{- end }}

{{/* "true" when every shard reads a queue of its own (events.queueUrls). Fails on the
     combinations that would lose events: a queue shared by shards (SQS hands a message to
     one reader only, and a shard deletes the events of accounts it does not watch). */}}
{{- define "iam-key-exporter.queuePerShard" -}}
{{- $replicas := int .Values.sharding.replicas }}
{{- $urls := .Values.events.queueUrls | default list }}
{{- $configEvents := (.Values.config | default dict).events | default dict }}
{{- if gt $replicas 1 }}
{{- range $key, $url := dict "events.queueUrl" .Values.events.queueUrl "config.events.queue_url" (get $configEvents "queue_url") }}
{{- if $url }}
{{- fail (printf "%s: with sharding.replicas %d every shard needs a queue of its own (SQS hands each message to one reader); list them in events.queueUrls" $key $replicas) }}
{{- end }}
{{- end }}
{{- if and $urls (ne (len $urls) $replicas) }}
{{- fail (printf "events.queueUrls: %d queue URLs for sharding.replicas %d; give one per shard, in shard order" (len $urls) $replicas) }}
{{- end }}
{{- if $urls }}true{{ end }}
{{- else if $urls }}
{{- fail "events.queueUrls: only with sharding.replicas > 1 (one queue per shard); a single replica takes events.queueUrl" }}
{{- end }}
{{- end }}

{{/* What the pods' checksum/config annotation hashes: the config, and the queue of each
     shard when there is one. */}}
{{- define "iam-key-exporter.configChecksum" -}}
{{- $doc := include "iam-key-exporter.config" . }}
{{- if include "iam-key-exporter.queuePerShard" . }}
{{- $doc = printf "%s\n%s" $doc (toJson .Values.events.queueUrls) }}
{{- end }}
{{- $doc | sha256sum }}
{{- end }}

{{/* The pod template shared by the Deployment and the StatefulSet. */}}
{{- define "iam-key-exporter.podTemplate" -}}
metadata:
  labels:
    {{- include "iam-key-exporter.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "iam-key-exporter.configChecksum" . }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "iam-key-exporter.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: exporter
      image: {{ include "iam-key-exporter.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - --config
        - {{ include "iam-key-exporter.configPath" . }}
        - --listen
        - "0.0.0.0:{{ include "iam-key-exporter.containerPort" . }}"
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      {{- if or (gt (int .Values.sharding.replicas) 1) .Values.env }}
      env:
        {{- if gt (int .Values.sharding.replicas) 1 }}
        # The exporter takes its shard index from the ordinal of the StatefulSet pod
        # name ("<name>-2" -> shard 2 of IAM_KEY_EXPORTER_SHARD_TOTAL).
        - name: IAM_KEY_EXPORTER_SHARD_TOTAL
          value: {{ .Values.sharding.replicas | quote }}
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- with .Values.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- with .Values.existingSecret }}
      envFrom:
        - secretRef:
            name: {{ . }}
      {{- end }}
      ports:
        - name: http-metrics
          containerPort: {{ include "iam-key-exporter.containerPort" . }}
          protocol: TCP
      livenessProbe:
        httpGet:
          path: /healthz
          port: http-metrics
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http-metrics
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: config
          mountPath: {{ dir (include "iam-key-exporter.configPath" .) }}
          readOnly: true
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: config
      configMap:
        name: {{ include "iam-key-exporter.fullname" . }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.tmpSizeLimit }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
